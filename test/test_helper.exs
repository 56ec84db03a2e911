# After the suite, stop the application (and with it every pool) and make sure
# no Python worker started by this VM is still running.
ExUnit.after_suite(fn _result ->
  Application.stop(:snakepit)

  case Snakepit.Test.OsProcesses.workers_of_this_vm() do
    [] ->
      :ok

    leaked ->
      IO.puts(:stderr, "\nleaked Python worker processes after the suite: #{inspect(leaked)}")
      System.halt(1)
  end
end)

Snakepit.Test.Telemetry.start()
ExUnit.start()
