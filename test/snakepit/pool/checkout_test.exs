defmodule Snakepit.Pool.CheckoutTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Pool}
  alias Snakepit.Test.{OsProcesses, Pools, Wait}

  # A pool of the stateful test adapter; returns its name.
  defp start_pool(opts),
    do: Pools.start!("demo_adapters.StatefulAdapter", Keyword.merge([size: 2], opts))

  defp whoami(pool, opts \\ []) do
    Snakepit.execute("whoami", %{}, Keyword.put(opts, :pool, pool))
  end

  # Occupies one slot of the session's worker with a stream whose callback
  # blocks until released; returns the holding task.
  defp hold(pool, session_id) do
    test = self()

    task =
      Task.async(fn ->
        Snakepit.execute_in_session_stream(
          session_id,
          "ticks",
          %{},
          fn _ ->
            send(test, {:holding, self()})

            receive do
              :release -> :halt
            end
          end,
          pool: pool
        )
      end)

    assert_receive {:holding, _}, 10_000
    task
  end

  defp release(task) do
    send(task.pid, :release)
    assert :ok = Task.await(task, 10_000)
  end

  defp kill_worker_of(pool, session_id) do
    {:ok, %{"os_pid" => os_pid}} =
      Snakepit.execute_in_session(session_id, "whoami", %{}, pool: pool)

    System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
    assert Wait.until(fn -> not OsProcesses.alive?(os_pid) end, 5_000)
    # Wait for the pool to notice: the killed worker leaves its slot.
    assert Wait.until(fn -> not Enum.any?(Pool.workers(pool), &(&1.os_pid == os_pid)) end, 5_000)
    os_pid
  end

  describe "concurrency" do
    test "200 concurrent callers on 2 workers all get their own answers" do
      pool = start_pool(size: 2, concurrency: 4)

      results =
        1..200
        |> Enum.map(fn i ->
          Task.async(fn -> Snakepit.execute("set_counter", %{value: i}, pool: pool) end)
        end)
        |> Task.await_many(60_000)

      assert results == Enum.map(1..200, &{:ok, %{"value" => &1}})
      assert {:ok, %{requests: 200, errors: 0, queued: 0}} = Pool.stats(pool)
    end

    test "a full queue answers :pool_saturated at once" do
      pool = start_pool(size: 1, concurrency: 1, max_queue: 1)
      holder = hold(pool, "s")

      waiter = Task.async(fn -> whoami(pool) end)
      assert Wait.until(fn -> match?({:ok, %{queued: 1}}, Pool.stats(pool)) end, 5_000)

      assert {:error, %Error{category: :pool, details: %{reason: :pool_saturated}}} = whoami(pool)

      release(holder)
      assert {:ok, %{"worker_id" => _}} = Task.await(waiter)
    end

    test "callers that leave the queue do not hold up the ones behind them" do
      pool = start_pool(size: 1, concurrency: 1)
      holder = hold(pool, "s")

      # 300 callers that give up (checkout timeout, or killed) between 50
      # that wait: the queue skips the ones gone and serves the rest in order.
      patient =
        for i <- 1..350 do
          case rem(i, 7) do
            0 ->
              {:patient, Task.async(fn -> whoami(pool, timeout: 60_000) end)}

            1 ->
              {:killed, Task.async(fn -> whoami(pool, timeout: 60_000) end)}

            # Long enough for all 350 to be queued first, even on a loaded
            # machine.
            _ ->
              {:impatient, Task.async(fn -> whoami(pool, checkout_timeout: 3_000) end)}
          end
        end

      assert Wait.until(fn -> match?({:ok, %{queued: 350}}, Pool.stats(pool)) end, 10_000)

      for {:killed, task} <- patient, do: Task.shutdown(task, :brutal_kill)

      for {:impatient, task} <- patient do
        assert {:error, %Error{details: %{reason: :checkout_timeout}}} = Task.await(task, 10_000)
      end

      assert Wait.until(fn -> match?({:ok, %{queued: 50}}, Pool.stats(pool)) end, 5_000)
      release(holder)

      for {:patient, task} <- patient do
        assert {:ok, %{"worker_id" => _}} = Task.await(task, 30_000)
      end

      assert Wait.until(
               fn -> match?({:ok, %{queued: 0, in_flight: 0}}, Pool.stats(pool)) end,
               5_000
             )
    end

    test "a waiter that dies before taking its granted worker gives the slot back" do
      pool = start_pool(size: 1, concurrency: 1)
      holder = hold(pool, "s")
      waiter = spawn(fn -> whoami(pool, timeout: 60_000) end)
      assert Wait.until(fn -> match?({:ok, %{queued: 1}}, Pool.stats(pool)) end, 5_000)
      # Granted while it cannot run: the lease waits in its mailbox.
      :erlang.suspend_process(waiter)
      release(holder)

      assert Wait.until(
               fn -> match?({:ok, %{queued: 0, in_flight: 1}}, Pool.stats(pool)) end,
               5_000
             )

      Process.exit(waiter, :kill)
      assert Wait.until(fn -> match?({:ok, %{in_flight: 0}}, Pool.stats(pool)) end, 5_000)
    end

    test "time spent waiting for a worker counts against the call's timeout" do
      pool = start_pool(size: 1, concurrency: 1)
      holder = hold(pool, "s")

      assert {:error, %Error{category: :timeout, details: %{reason: :timeout}} = error} =
               whoami(pool, timeout: 200)

      assert error.message =~ "waited for a worker"
      release(holder)
    end

    test "waiting longer than the checkout timeout is a :timeout error" do
      pool = start_pool(size: 1, concurrency: 1)
      holder = hold(pool, "s")

      assert {:error, %Error{category: :timeout, details: %{reason: :checkout_timeout}}} =
               whoami(pool, checkout_timeout: 100)

      assert {:ok, %{queued: 0}} = Pool.stats(pool)
      release(holder)
      assert {:ok, _} = whoami(pool)
    end
  end

  describe "sessions" do
    test "state stays on the session's worker" do
      pool = start_pool(size: 3)

      for i <- 1..5 do
        assert {:ok, _} =
                 Snakepit.execute_in_session("user_#{i}", "set_counter", %{value: i}, pool: pool)
      end

      for i <- 1..5 do
        assert {:ok, %{"value" => ^i}} =
                 Snakepit.execute_in_session("user_#{i}", "get_counter", %{}, pool: pool)
      end
    end

    test "concurrent first requests of a session land on one worker" do
      pool = start_pool(size: 4, concurrency: 32)

      ids =
        1..20
        |> Enum.map(fn _ ->
          Task.async(fn -> Snakepit.execute_in_session("fresh", "whoami", %{}, pool: pool) end)
        end)
        |> Task.await_many()
        |> Enum.map(fn {:ok, %{"worker_id" => id}} -> id end)

      assert length(Enum.uniq(ids)) == 1
    end

    test "the session id reaches the stream's tool too" do
      pool = start_pool(size: 1)
      me = self()

      assert :ok =
               Snakepit.execute_in_session_stream(
                 "s1",
                 "ticks",
                 %{},
                 fn %{"tick" => t} -> if t == 1, do: :halt, else: send(me, :tick) end,
                 pool: pool
               )

      assert_received :tick
    end

    test "a bad session id is refused" do
      assert {:error, %Error{category: :validation}} =
               Snakepit.execute_in_session("", "ping", %{})

      assert {:error, %Error{category: :validation}} =
               Snakepit.execute_in_session(:atom, "ping", %{})
    end
  end

  describe ":hint affinity" do
    test "uses the preferred worker when it is free" do
      pool = start_pool(size: 3)
      {:ok, %{"worker_id" => first}} = whoami(pool, session_id: "h")

      for _ <- 1..5 do
        assert {:ok, %{"worker_id" => ^first}} = whoami(pool, session_id: "h")
      end
    end

    test "goes to another worker when the preferred one is busy" do
      pool = start_pool(size: 2, concurrency: 1)
      {:ok, %{"worker_id" => preferred}} = whoami(pool, session_id: "h")
      holder = hold(pool, "h")

      assert {:ok, %{"worker_id" => other}} = whoami(pool, session_id: "h")
      assert other != preferred

      release(holder)
      assert {:ok, %{"worker_id" => ^preferred}} = whoami(pool, session_id: "h")
    end

    @tag :capture_log
    test "moves to a live worker when the preferred one is gone, and stays there" do
      pool = start_pool(size: 2)
      killed = kill_worker_of(pool, "h")

      assert {:ok, %{"os_pid" => now}} = whoami(pool, session_id: "h")
      assert now != killed
      assert {:ok, %{"os_pid" => ^now}} = whoami(pool, session_id: "h")
    end
  end

  describe ":strict_queue affinity" do
    test "uses the free preferred worker, and waits for it when busy" do
      pool = start_pool(size: 2, concurrency: 1)
      {:ok, %{"worker_id" => preferred}} = whoami(pool, session_id: "q")

      for _ <- 1..3 do
        assert {:ok, %{"worker_id" => ^preferred}} =
                 whoami(pool, session_id: "q", affinity: :strict_queue)
      end

      holder = hold(pool, "q")

      waiter = Task.async(fn -> whoami(pool, session_id: "q", affinity: :strict_queue) end)
      assert Wait.until(fn -> match?({:ok, %{queued: 1}}, Pool.stats(pool)) end, 5_000)

      # The other worker is free, yet the call waits for the preferred one.
      assert {:ok, _} = whoami(pool)
      assert Task.yield(waiter, 0) == nil

      release(holder)
      assert {:ok, %{"worker_id" => ^preferred}} = Task.await(waiter)
    end

    test "gives up after the checkout timeout" do
      pool = start_pool(size: 2, concurrency: 1)
      {:ok, _} = whoami(pool, session_id: "q")
      holder = hold(pool, "q")

      assert {:error, %Error{category: :timeout, details: %{reason: :checkout_timeout}}} =
               whoami(pool, session_id: "q", affinity: :strict_queue, checkout_timeout: 100)

      release(holder)
    end

    @tag :capture_log
    test "a gone or restarted preferred worker is :session_worker_unavailable" do
      pool = start_pool(size: 1)
      kill_worker_of(pool, "q")

      # Even once the slot has a fresh worker, its Python state is not the session's.
      assert Wait.until(fn -> length(Pool.workers(pool)) == 1 end, 10_000)
      assert {:ok, %{"worker_id" => _}} = whoami(pool)

      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               whoami(pool, session_id: "q", affinity: :strict_queue)
    end

    @tag :capture_log
    test "a caller waiting for a worker that dies is told at once" do
      pool = start_pool(size: 1, concurrency: 1)
      {:ok, %{"os_pid" => os_pid}} = whoami(pool, session_id: "q")
      test = self()

      holder =
        Task.async(fn ->
          Snakepit.execute_in_session("q", "hold", %{ms: 30_000}, pool: pool)
          |> tap(fn _ -> send(test, :holder_done) end)
        end)

      assert Wait.until(fn -> match?({:ok, %{busy: 1}}, Pool.stats(pool)) end, 5_000)

      waiter = Task.async(fn -> whoami(pool, session_id: "q", affinity: :strict_queue) end)

      assert Wait.until(fn -> match?({:ok, %{queued: 1}}, Pool.stats(pool)) end, 5_000)
      System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

      assert {:error, %Error{details: %{reason: :session_worker_unavailable}}} =
               Task.await(waiter)

      assert {:error, %Error{category: :worker}} = Task.await(holder)
    end
  end

  describe ":strict_fail_fast affinity" do
    test "uses the preferred worker when free, else :worker_busy at once" do
      pool = start_pool(size: 2, concurrency: 1)
      {:ok, %{"worker_id" => preferred}} = whoami(pool, session_id: "f")

      assert {:ok, %{"worker_id" => ^preferred}} =
               whoami(pool, session_id: "f", affinity: :strict_fail_fast)

      holder = hold(pool, "f")

      assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
               whoami(pool, session_id: "f", affinity: :strict_fail_fast)

      release(holder)
    end

    @tag :capture_log
    test "a gone preferred worker is :session_worker_unavailable" do
      pool = start_pool(size: 2, affinity: :strict_fail_fast)
      kill_worker_of(pool, "f")

      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               whoami(pool, session_id: "f")
    end
  end

  describe "worker crashes" do
    @tag :capture_log
    test "a worker killed during a call fails that call with a :worker error" do
      pool = start_pool(size: 1)
      {:ok, %{"os_pid" => os_pid}} = whoami(pool)
      call = Task.async(fn -> Snakepit.execute("hold", %{ms: 30_000}, pool: pool) end)
      assert Wait.until(fn -> match?({:ok, %{busy: 1}}, Pool.stats(pool)) end, 5_000)

      System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

      result = Task.await(call, 5_000)

      assert {:error, %Error{category: :worker, details: %{reason: :worker_exited}} = error} =
               result,
             inspect(result)

      assert error.message =~ "signal 9"

      # Other callers are fine: the slot gets a new worker.
      assert Wait.until(
               fn -> match?([%{os_pid: pid}] when pid != os_pid, Pool.workers(pool)) end,
               10_000
             )

      assert {:ok, %{"os_pid" => new_pid}} = whoami(pool)
      assert new_pid != os_pid
      assert {:ok, %{restarts: 1}} = Pool.stats(pool)
    end

    @tag :capture_log
    test "a worker killed during a stream fails that stream with a :worker error" do
      pool = start_pool(size: 1)
      {:ok, %{"os_pid" => os_pid}} = whoami(pool)
      me = self()

      result =
        Snakepit.execute_stream(
          "ticks",
          %{},
          fn %{"tick" => t} ->
            if t == 2, do: System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
            send(me, {:tick, t})
          end,
          pool: pool
        )

      assert {:error, %Error{category: :worker}} = result
      assert_received {:tick, 2}
    end
  end

  describe "restarts" do
    @tag :capture_log
    test "a worker that keeps dying soon after start is restarted with growing backoff" do
      pool = Pools.start!("demo_adapters.CrashingAdapter")

      backoffs =
        for _ <- 1..3 do
          [%{os_pid: os_pid}] = Pool.workers(pool)
          assert {:error, %Error{category: :worker}} = Snakepit.execute("crash", %{}, pool: pool)

          assert Wait.until(
                   fn -> match?([%{os_pid: new}] when new != os_pid, Pool.workers(pool)) end,
                   10_000
                 )

          {:ok, [info]} = Pool.worker_info(pool)
          assert info.last_error =~ "exited: {:exit_status, 3}"
          info.restart_backoff_ms
        end

      assert backoffs == [100, 200, 400]
      assert {:ok, %{restarts: 3}} = Pool.stats(pool)
    end
  end

  describe "recycling" do
    test "a worker is replaced after max_requests, finishing its work first" do
      pool = start_pool(size: 1, max_requests: 3)
      {:ok, %{"os_pid" => first}} = whoami(pool)
      {:ok, %{"os_pid" => ^first}} = whoami(pool)
      {:ok, %{"os_pid" => ^first}} = whoami(pool)

      assert Wait.until(fn -> not OsProcesses.alive?(first) end, 10_000)
      assert Wait.until(fn -> length(Pool.workers(pool)) == 1 end, 10_000)
      assert {:ok, %{"os_pid" => second}} = whoami(pool)
      assert second != first
      assert {:ok, %{recycles: 1, restarts: 0}} = Pool.stats(pool)
    end

    test "a recycled worker finishes the requests it already has" do
      pool = start_pool(size: 1, max_requests: 2)
      {:ok, %{"os_pid" => first}} = whoami(pool)

      # The second request is the last one; it is still running while the
      # replacement starts, and it completes on the old worker.
      long = Task.async(fn -> Snakepit.execute("hold", %{ms: 500}, pool: pool) end)
      assert {:ok, %{"held_ms" => 500}} = Task.await(long)

      assert Wait.until(fn -> not OsProcesses.alive?(first) end, 10_000)

      assert Wait.until(
               fn -> match?([%{os_pid: pid}] when pid != first, Pool.workers(pool)) end,
               10_000
             )

      assert {:ok, %{"os_pid" => second}} = whoami(pool)
      assert second != first
    end

    test "a worker is replaced after its time to live" do
      pool = start_pool(size: 1, worker_ttl: 300)
      {:ok, %{"os_pid" => first}} = whoami(pool)

      assert Wait.until(fn -> not OsProcesses.alive?(first) end, 10_000)
      assert Wait.until(fn -> length(Pool.workers(pool)) == 1 end, 10_000)
      assert {:ok, %{"os_pid" => second}} = whoami(pool)
      assert second != first
    end
  end

  describe "introspection" do
    test "stats, worker info and health" do
      pool = start_pool(size: 2)
      {:ok, _} = whoami(pool)
      {:error, _} = Snakepit.execute("no_such_tool", %{}, pool: pool)

      assert {:ok, %{workers: 2, busy: 0, requests: 2, errors: 1, queued: 0}} = Pool.stats(pool)

      assert {:ok, [first, second]} = Pool.worker_info(pool)
      assert %{status: :ready, slot: 0, in_flight: 0, last_error: nil} = first
      assert first.served + second.served == 2
      assert is_integer(first.os_pid) and is_integer(first.port) and first.uptime_ms >= 0

      assert {:ok, health} = Pool.health(pool)
      assert Map.values(health) == [:ok, :ok]
    end
  end
end
