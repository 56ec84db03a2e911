defmodule Snakepit.TransportTest do
  # Pools reach their workers over loopback TCP (the default) or, with
  # `transport: :unix`, over Unix sockets in Linux's abstract namespace.
  # Everything a pool does must work the same over both.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Pool}
  alias Snakepit.Test.{OsProcesses, Pools, Wait}

  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  describe "transport: :unix" do
    test "workers serve on abstract sockets and say so" do
      pool = Pools.start!(@showcase, size: 2, transport: :unix)

      for worker <- Pool.workers(pool) do
        assert "unix:@snakepit-" <> _ = worker.address
        assert worker.port == nil
        assert inspect(worker) =~ ~r/^#Snakepit.Worker<\S+ pid=\d+ unix:@snakepit-\S+>$/
      end

      {:ok, info} = Pool.worker_info(pool)
      assert Enum.all?(info, &match?(%{status: :ready, address: "unix:@" <> _}, &1))
    end

    test "calls, binaries, streams and sessions work as over TCP" do
      pool = Pools.start!(@showcase, transport: :unix)

      assert {:ok, 42} = Snakepit.execute("add", %{a: 40, b: 2}, pool: pool)

      blob = :crypto.strong_rand_bytes(300_000)

      assert {:ok, reversed} =
               Snakepit.execute("process_binary", %{operation: "reverse"},
                 binary_parameters: %{data: blob},
                 pool: pool
               )

      assert reversed == blob |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()

      me = self()

      assert :ok =
               Snakepit.execute_stream("stream_numbers", %{count: 2_000}, &send(me, &1),
                 pool: pool
               )

      for i <- 0..1_999, do: assert_received(%{"number" => ^i})

      session = "transport-#{System.unique_integer([:positive])}"

      assert {:ok, _} =
               Snakepit.execute_in_session(session, "set_counter", %{value: 7}, pool: pool)

      assert {:ok, %{"value" => 7}} =
               Snakepit.execute_in_session(session, "get_counter", %{}, pool: pool)
    end

    @tag :capture_log
    test "a worker that dies is replaced by one on a fresh socket" do
      pool = Pools.start!(@showcase, transport: :unix)
      [worker] = Pool.workers(pool)

      System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])

      assert Wait.until(
               fn -> match?([%{os_pid: pid}] when pid != worker.os_pid, Pool.workers(pool)) end,
               10_000
             )

      [replacement] = Pool.workers(pool)
      assert "unix:@" <> _ = replacement.address
      assert replacement.address != worker.address
      refute OsProcesses.alive?(worker.os_pid)
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
    end
  end

  test "TCP stays the default" do
    pool = Pools.start!(@showcase)
    [worker] = Pool.workers(pool)
    assert worker.address == "127.0.0.1:#{worker.port}"
  end

  test "an unknown transport is refused with a clear error" do
    assert {:error, %Error{category: :validation, message: message}} =
             Pool.start_link(name: :transport_bad, transport: :udp)

    assert message =~ "pool :transport must be one of [:tcp, :unix]"
  end
end
