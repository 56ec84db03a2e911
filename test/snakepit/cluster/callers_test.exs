defmodule Snakepit.Cluster.CallersTest do
  use ExUnit.Case, async: true

  alias Snakepit.Cluster.Callers
  alias Snakepit.Test.Wait

  # A process serving `caller` until told to stop; reports its result.
  defp serve(caller) do
    test = self()

    spawn(fn ->
      result = Callers.run(caller, fn -> receive(do: (:stop -> :done)) end)
      send(test, {:served, self(), result})
    end)
  end

  defp monitors do
    {:monitors, monitors} = Process.info(Process.whereis(Callers), :monitors)
    monitors
  end

  defp caller, do: spawn(fn -> Process.sleep(:infinity) end)

  test "the servers of a caller die with it; one monitor per caller however many calls" do
    caller = caller()
    servers = for _ <- 1..5, do: serve(caller)
    refs = Enum.map(servers, &Process.monitor/1)

    assert Wait.until(
             fn -> :ets.select_count(Callers.Servers, [{{{caller, :_}}, [], [true]}]) == 5 end,
             5_000
           )

    assert Wait.until(fn -> Enum.count(monitors(), &(&1 == {:process, caller})) == 1 end, 5_000)
    :sys.get_state(Callers)
    assert Enum.count(monitors(), &(&1 == {:process, caller})) == 1

    # One server finished: it is forgotten, the others still run.
    [first | rest] = servers
    send(first, :stop)
    assert_receive {:served, ^first, :done}

    Process.exit(caller, :kill)

    for {server, ref} <- Enum.zip(servers, refs), server in rest do
      assert_receive {:DOWN, ^ref, :process, ^server, :killed}
    end

    assert Wait.until(fn -> not Enum.any?(monitors(), &(&1 == {:process, caller})) end, 5_000)
  end

  test "a server of a caller already gone is killed at once" do
    caller = caller()
    Process.exit(caller, :kill)
    server = serve(caller)
    ref = Process.monitor(server)
    assert_receive {:DOWN, ^ref, :process, ^server, :killed}, 5_000
  end

  test "a caller that lives on keeps its servers" do
    caller = caller()
    server = serve(caller)
    send(server, :stop)
    assert_receive {:served, ^server, :done}
    Process.exit(caller, :kill)
  end
end
