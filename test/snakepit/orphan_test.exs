defmodule Snakepit.OrphanTest do
  use ExUnit.Case, async: true

  alias Snakepit.Test.{OsProcesses, Wait}

  @moduletag timeout: 60_000

  # A separate VM runs a pool and prints its workers' OS pids; we kill that VM
  # with SIGKILL (no cleanup code can run) and watch its workers disappear.
  test "workers die with a VM killed by SIGKILL" do
    script = """
    Application.put_env(:snakepit, :pools, [[name: :default, size: 2]])
    {:ok, _} = Application.ensure_all_started(:snakepit)
    pids = Enum.map_join(Snakepit.Pool.workers(:default), ",", & &1.os_pid)
    IO.puts("WORKERS:" <> pids)
    Process.sleep(:infinity)
    """

    {port, vm_pid} = OsProcesses.start_vm(script)
    workers = await_workers(port)
    assert length(workers) == 2
    assert Enum.all?(workers, &OsProcesses.alive?/1)

    System.cmd("kill", ["-KILL", Integer.to_string(vm_pid)])
    assert_receive {^port, {:exit_status, _}}, 10_000

    # Death is asynchronous; the promise is "within 2 seconds".
    assert Wait.until(fn -> not Enum.any?(workers, &OsProcesses.alive?/1) end, 2_000),
           "workers #{inspect(workers)} outlived their VM"
  end

  defp await_workers(port) do
    receive do
      {^port, {:data, {:eol, "WORKERS:" <> pids}}} ->
        pids |> String.split(",") |> Enum.map(&String.to_integer/1)

      {^port, {:data, _other}} ->
        await_workers(port)

      {^port, {:exit_status, status}} ->
        flunk("the VM exited with status #{status} before starting its pool")
    after
      30_000 -> flunk("the VM did not report its workers")
    end
  end
end
