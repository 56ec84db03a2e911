defmodule Snakepit.PoolTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Pool}
  alias Snakepit.Test.{OsProcesses, Wait}

  @adapters_dir Path.expand("../support/python", __DIR__)

  defp pool_name, do: :"pool_#{System.unique_integer([:positive])}"

  describe "a pool in the user's supervision tree" do
    test "runs a user adapter written as in the seeds" do
      name = pool_name()

      start_supervised!(
        {Pool,
         name: name,
         size: 1,
         adapter: "demo_adapters.GreeterAdapter",
         python_path: [@adapters_dir]}
      )

      assert {:ok, %{"text" => "Hello, Ada!"}} =
               Snakepit.execute("greet", %{name: "Ada"}, pool: name)

      me = self()
      assert :ok = Snakepit.execute_stream("countdown", %{start: 3}, &send(me, &1), pool: name)
      assert_received %{"n" => 3, "is_final" => false}
      assert_received %{"n" => 2, "is_final" => false}
      assert_received %{"n" => 1, "is_final" => true}

      # Hand dispatch through execute_tool for names that are not @tool methods.
      assert {:ok, "QUIET"} = Snakepit.execute("shout", %{text: "quiet"}, pool: name)
    end

    test "starts its workers and shows them without their raw handles" do
      name = pool_name()
      start_supervised!({Pool, name: name, size: 3})

      workers = Pool.workers(name)
      assert length(workers) == 3
      assert Enum.all?(workers, &OsProcesses.alive?(&1.os_pid))
      [worker | _] = workers
      assert inspect(worker) =~ ~r/^#Snakepit.Worker<#{name}-\d pid=\d+ 127\.0\.0\.1:\d+>$/
    end

    test "one worker serves a call while a stream is running on it" do
      name = pool_name()
      start_supervised!({Pool, name: name, size: 1})
      me = self()

      Snakepit.execute_stream(
        "infinite_stream",
        %{delay_ms: 5},
        fn %{"tick" => tick} ->
          if tick == 2 do
            # The only worker is busy streaming; it still answers.
            send(me, {:during_stream, Snakepit.execute("add", %{a: 2, b: 2}, pool: name)})
            :halt
          end
        end,
        pool: name
      )

      assert_received {:during_stream, {:ok, 4}}
    end

    test "stopping the pool leaves no worker process behind" do
      name = pool_name()
      # Temporary: the test supervisor must not restart the pool we stop.
      pid =
        start_supervised!(Supervisor.child_spec({Pool, name: name, size: 2}, restart: :temporary))

      os_pids = Enum.map(Pool.workers(name), & &1.os_pid)
      assert length(os_pids) == 2

      :ok = Pool.stop(pid)

      refute Enum.any?(os_pids, &OsProcesses.alive?/1)

      assert {:error, %Error{category: :pool, details: %{reason: :unknown_pool}}} =
               Snakepit.execute("ping", %{}, pool: name)
    end

    @tag :capture_log
    test "a supervised pool stops for good with Supervisor.terminate_child/2" do
      name = pool_name()
      # The user's supervisor, itself supervised by the test (stopped after it).
      sup =
        start_supervised!(%{
          id: :user_supervisor,
          start:
            {Supervisor, :start_link, [[{Pool, name: name, size: 1}], [strategy: :one_for_one]]},
          type: :supervisor
        })

      [worker] = Pool.workers(name)

      assert :ok = Supervisor.terminate_child(sup, {Pool, name})

      refute OsProcesses.alive?(worker.os_pid)

      assert {:error, %Error{details: %{reason: :unknown_pool}}} =
               Snakepit.execute("ping", %{}, pool: name)
    end

    test "stopping escalates to SIGKILL after the grace and takes the workers' children" do
      name = pool_name()

      spec =
        {Pool,
         name: name,
         size: 1,
         adapter: "stubborn_adapter.StubbornAdapter",
         python_path: [@adapters_dir],
         stop_grace: 200}

      pid = start_supervised!(Supervisor.child_spec(spec, restart: :temporary))
      [worker] = Pool.workers(name)
      {:ok, child} = Snakepit.execute("spawn_child", %{}, pool: name)
      assert OsProcesses.alive?(child)

      # The worker ignores SIGTERM; stop returns once SIGKILL has ended it.
      :ok = Pool.stop(pid)
      refute OsProcesses.alive?(worker.os_pid)
      assert Wait.until(fn -> not OsProcesses.alive?(child) end, 2_000)
    end

    test "two pools with different adapters run side by side" do
      showcase = pool_name()
      greeter = pool_name()
      start_supervised!({Pool, name: showcase, size: 1}, id: showcase)

      start_supervised!(
        {Pool,
         name: greeter,
         size: 1,
         adapter: "demo_adapters.GreeterAdapter",
         python_path: [@adapters_dir]},
        id: greeter
      )

      assert {:ok, 5} = Snakepit.execute("add", %{a: 2, b: 3}, pool: showcase)

      assert {:ok, %{"text" => "Hello, Bo!"}} =
               Snakepit.execute("greet", %{name: "Bo"}, pool: greeter)

      assert {:error, %Error{category: :validation}} =
               Snakepit.execute("greet", %{name: "Bo"}, pool: showcase)

      # The greeter's own execute_tool fallback refuses names it does not know.
      assert {:error, %Error{category: :python, python_type: "KeyError"}} =
               Snakepit.execute("add", %{a: 2, b: 3}, pool: greeter)
    end

    @tag :capture_log
    test "a worker that dies is replaced" do
      name = pool_name()
      start_supervised!({Pool, name: name, size: 1})
      [worker] = Pool.workers(name)

      System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])

      assert Wait.until(
               fn -> match?([%{os_pid: pid}] when pid != worker.os_pid, Pool.workers(name)) end,
               10_000
             )

      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: name)
    end
  end

  describe "memory" do
    test "a worker past :max_memory_mb is recycled once its calls in flight are done" do
      Snakepit.Test.Telemetry.attach([[:snakepit, :worker, :recycle]])
      pool = Snakepit.Test.Pools.start!("bulk_adapters.BulkAdapter", max_memory_mb: 150)
      [%{os_pid: os_pid, memory_mb: memory_mb}] = Pool.worker_info(pool) |> elem(1)
      assert memory_mb > 0 and memory_mb < 150

      # A call in flight on the worker while it grows past the limit.
      in_flight =
        Task.async(fn ->
          Snakepit.execute_stream("then_silence", %{silence_ms: 2_500}, fn _ -> :ok end,
            pool: pool
          )
        end)

      assert Wait.until(fn -> match?({:ok, %{in_flight: 1}}, Pool.stats(pool)) end, 5_000)
      assert {:ok, 200} = Snakepit.execute("hold_memory", %{mb: 200}, pool: pool)

      assert_receive {:telemetry, [:snakepit, :worker, :recycle], %{uptime: _},
                      %{pool: ^pool, reason: :max_memory, os_pid: ^os_pid}},
                     10_000

      # The call in flight finishes; a new worker takes the calls.
      assert :ok = Task.await(in_flight, 10_000)

      assert Wait.until(
               fn ->
                 match?(
                   {:ok, [%{status: :ready, os_pid: pid}]} when pid != os_pid,
                   Pool.worker_info(pool)
                 )
               end,
               10_000
             )

      assert Wait.until(fn -> not OsProcesses.alive?(os_pid) end, 10_000)
      assert {:ok, 1} = Snakepit.execute("hold_memory", %{mb: 1}, pool: pool)
      assert {:ok, %{recycles: 1}} = Pool.stats(pool)
    end
  end

  describe "start-up failures are reported, never hang" do
    @tag timeout: 20_000
    test "an adapter that cannot be imported fails the pool with the Python error" do
      name = pool_name()

      assert {:error, {%Error{} = error, _child}} =
               start_supervised({Pool, name: name, size: 2, adapter: "no_such_module.Adapter"})

      assert error.category == :worker
      assert error.message =~ "ModuleNotFoundError"
      assert error.message =~ "no_such_module"
      assert Pool.workers(name) == []
    end

    @tag timeout: 20_000
    test "an adapter that raises on import fails with its traceback" do
      name = pool_name()

      assert {:error, {%Error{} = error, _}} =
               start_supervised(
                 {Pool,
                  name: name,
                  size: 1,
                  adapter: "broken_adapter.BrokenAdapter",
                  python_path: [@adapters_dir]}
               )

      assert error.message =~ "RuntimeError: this adapter is broken on purpose"
      # What it logged before failing, as a log line, not as the record's wire form.
      assert error.message =~ "\nERROR broken_adapter: the model file is missing\n"
      refute error.message =~ "snakepit-log"
    end

    test "bad configuration is a :validation error" do
      bad = [
        [size: 1],
        [name: "string", size: 1],
        [name: pool_name(), size: 0],
        [name: pool_name(), size: :many],
        [name: pool_name(), adapter: "not a path"],
        [name: pool_name(), python: "definitely-not-a-python-3"],
        [name: pool_name(), env: %{"A" => 1}],
        [name: pool_name(), colour: :blue],
        [name: pool_name(), affinity: :sometimes],
        [name: pool_name(), concurrency: 0],
        [name: pool_name(), max_queue: -1],
        [name: pool_name(), max_requests: 0],
        [name: pool_name(), size: 1, size: 2]
      ]

      for opts <- bad do
        assert {:error, %Error{category: :validation}} = Pool.start_link(opts), inspect(opts)
      end
    end

    test "two pools cannot share a name" do
      assert {:error, {%Error{category: :validation} = error, _}} =
               start_supervised({Pool, name: :default, size: 1}, id: :second_default)

      assert error.details.reason == :duplicate_pool
    end
  end
end
