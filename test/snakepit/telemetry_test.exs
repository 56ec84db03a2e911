defmodule Snakepit.TelemetryTest do
  # Snakepit's events, through its real code path: `:telemetry` here is the
  # stand-in of test/support/telemetry.ex, which hands them to the test.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Pool, Session}
  alias Snakepit.Test.{Pools, Telemetry}

  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  defp span(prefix), do: for(suffix <- [:start, :stop, :exception], do: prefix ++ [suffix])

  # The next event `event` of pool `pool`.
  defmacrop event(event, pool, timeout \\ 5_000) do
    quote do
      assert_receive {:telemetry, unquote(event), measurements,
                      %{pool: ^unquote(pool)} = metadata},
                     unquote(timeout)

      {measurements, metadata}
    end
  end

  test "Snakepit emits events: :telemetry was there when it started" do
    assert Snakepit.Telemetry.enabled?()
  end

  test "a call is a span with pool, tool, worker, session, node and outcome" do
    Telemetry.attach(span([:snakepit, :call]))
    pool = Pools.start!(@showcase)
    assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)

    {start, meta} = event([:snakepit, :call, :start], pool)
    assert is_integer(start.monotonic_time) and is_integer(start.system_time)

    assert %{tool: "add", worker_id: worker_id, session_id: "", node: node} = meta
    assert node == node() and worker_id == "#{pool}-1"

    {stop, stop_meta} = event([:snakepit, :call, :stop], pool)
    assert stop.duration > 0 and is_integer(stop.monotonic_time)
    assert stop_meta.telemetry_span_context == meta.telemetry_span_context
    assert %{outcome: :ok, error: nil, tool: "add"} = stop_meta

    assert {:error, %Error{category: :python}} =
             Snakepit.execute("error_demo", %{}, pool: pool, session_id: "telemetry_s")

    {_, %{session_id: "telemetry_s"}} = event([:snakepit, :call, :start], pool)
    {_, stop_meta} = event([:snakepit, :call, :stop], pool)
    assert %{outcome: :error, error: %Error{category: :python}} = stop_meta
    refute_received {:telemetry, [:snakepit, :call, :exception], _, %{pool: ^pool}}
  end

  test "a stream's stop counts its chunks; a callback that raises is an :exception" do
    Telemetry.attach(span([:snakepit, :stream]) ++ span([:snakepit, :duplex]))
    pool = Pools.start!(@showcase)

    assert :ok =
             Snakepit.execute_stream("stream_numbers", %{count: 5}, fn _ -> :ok end, pool: pool)

    {_, %{tool: "stream_numbers"}} = event([:snakepit, :stream, :start], pool)
    {stop, meta} = event([:snakepit, :stream, :stop], pool)
    # Five numbers and the final chunk; `{"number":0}` ... `{"number":4}` (compact JSON).
    assert %{chunks: 6, bytes: bytes, duration: duration} = stop
    assert bytes == Enum.sum(for n <- 0..4, do: byte_size(~s({"number":#{n}})))
    assert duration > 0 and meta.outcome == :ok

    halt = fn %{"number" => n} -> if n == 2, do: :halt end
    assert :ok = Snakepit.execute_stream("stream_numbers", %{count: 50}, halt, pool: pool)
    {stop, _} = event([:snakepit, :stream, :stop], pool)
    assert stop.chunks == 3

    assert_raise RuntimeError, fn ->
      Snakepit.execute_stream("stream_numbers", %{count: 5}, fn _ -> raise "boom" end, pool: pool)
    end

    {_, meta} = event([:snakepit, :stream, :exception], pool)
    assert %{kind: :error, reason: %RuntimeError{message: "boom"}, stacktrace: [_ | _]} = meta

    assert :ok =
             Snakepit.execute_duplex("echo_inputs", %{}, [1, 2, 3], fn _ -> :ok end, pool: pool)

    {stop, meta} = event([:snakepit, :duplex, :stop], pool)
    assert stop.chunks == 4 and meta.tool == "echo_inputs" and meta.outcome == :ok
  end

  test "a universal call is a span; its operations on the worker are calls" do
    Telemetry.attach(span([:snakepit, :universal_call]) ++ [[:snakepit, :call, :stop]])
    pool = Pools.start!(@showcase)
    assert {:ok, 4.0} = Snakepit.call("math", "sqrt", [16], pool: pool)

    {_, meta} = event([:snakepit, :universal_call, :start], pool)
    assert %{module: "math", function: "sqrt", action: :call, node: node} = meta
    assert node == node()
    {_, %{tool: "snakepit.call"}} = event([:snakepit, :call, :stop], pool)
    {_, meta} = event([:snakepit, :universal_call, :stop], pool)
    assert %{outcome: :ok, worker_id: worker_id} = meta
    assert worker_id == "#{pool}-1"

    assert {:error, %Error{}} = Snakepit.call("no_such_module_here", "f", [], pool: pool)
    {_, meta} = event([:snakepit, :universal_call, :stop], pool)
    assert meta.outcome == :error
  end

  test "a wait in the queue, and a refusal of a saturated pool" do
    Telemetry.attach([[:snakepit, :checkout, :wait], [:snakepit, :pool, :saturated]])
    pool = Pools.start!(@showcase, concurrency: 1, max_queue: 1)

    busy =
      Task.async(fn -> Snakepit.execute("slow_steps", %{steps: 4, step_ms: 100}, pool: pool) end)

    assert Snakepit.Test.Wait.until(
             fn -> match?({:ok, %{in_flight: 1}}, Pool.stats(pool)) end,
             5_000
           )

    queued = Task.async(fn -> Snakepit.execute("add", %{a: 1, b: 1}, pool: pool) end)

    assert Snakepit.Test.Wait.until(
             fn -> match?({:ok, %{queued: 1}}, Pool.stats(pool)) end,
             5_000
           )

    assert {:error, %Error{details: %{reason: :pool_saturated}}} =
             Snakepit.execute("add", %{a: 1, b: 1}, pool: pool)

    {measurements, _} = event([:snakepit, :pool, :saturated], pool)
    assert measurements.queued == 1

    assert {:ok, %{"steps" => 4}} = Task.await(busy)
    assert {:ok, 2} = Task.await(queued)
    {measurements, meta} = event([:snakepit, :checkout, :wait], pool)
    assert measurements.duration > 0
    assert %{outcome: :granted, worker_id: worker_id} = meta
    assert worker_id == "#{pool}-1"
  end

  # The next event `event` of pool `pool` whose metadata matches `pattern`
  # (others of the pool are skipped).
  defp next_event(event, pool, match, timeout \\ 10_000) do
    receive do
      {:telemetry, ^event, measurements, %{pool: ^pool} = metadata} ->
        if match.(metadata),
          do: {measurements, metadata},
          else: next_event(event, pool, match, timeout)
    after
      timeout -> flunk("no #{inspect(event)} event of #{pool}")
    end
  end

  test "workers: start, ready, exit, restart" do
    Telemetry.attach(for e <- [:start, :ready, :exit, :restart], do: [:snakepit, :worker, e])
    pool = Pools.start!(@showcase)
    id = "#{pool}-1"

    {%{system_time: _}, %{worker_id: ^id, os_pid: os_pid}} =
      event([:snakepit, :worker, :start], pool)

    {%{duration: ready_in}, %{worker_id: ^id, os_pid: ^os_pid}} =
      event([:snakepit, :worker, :ready], pool)

    assert ready_in > 0

    # Killed: an exit the pool restarts.
    System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

    {%{uptime: uptime}, meta} =
      next_event([:snakepit, :worker, :exit], pool, &(&1.os_pid == os_pid))

    assert uptime > 0
    assert %{worker_id: ^id, status: {:signal, 9}, restart: true} = meta
    {%{delay: delay}, %{worker_id: ^id}} = event([:snakepit, :worker, :restart], pool)
    assert is_integer(delay)
    {_, %{os_pid: new_pid}} = event([:snakepit, :worker, :ready], pool, 10_000)
    assert new_pid != os_pid
  end

  test "workers: recycled after :max_requests, then stopped once drained" do
    Telemetry.attach([[:snakepit, :worker, :recycle], [:snakepit, :worker, :exit]])
    pool = Pools.start!(@showcase, max_requests: 2)
    [%{os_pid: os_pid}] = Pool.workers(pool)

    for _ <- 1..2, do: assert({:ok, _} = Snakepit.execute("ping", %{}, pool: pool))
    {%{uptime: uptime}, meta} = event([:snakepit, :worker, :recycle], pool)
    assert uptime > 0
    assert %{reason: :max_requests, os_pid: ^os_pid, worker_id: _} = meta
    {_, meta} = next_event([:snakepit, :worker, :exit], pool, &(&1.os_pid == os_pid))
    assert %{restart: false} = meta
  end

  test "sessions: created, deleted, expired" do
    Telemetry.attach([[:snakepit, :session, :created], [:snakepit, :session, :ended]])
    id = "telemetry_session_#{System.unique_integer([:positive])}"

    {:ok, _} = Session.create(id)

    assert_receive {:telemetry, [:snakepit, :session, :created], %{system_time: _},
                    %{session_id: ^id}}

    # Renewing is no creation.
    {:ok, _} = Session.create(id)
    refute_received {:telemetry, [:snakepit, :session, :created], _, %{session_id: ^id}}
    :ok = Session.delete(id)

    assert_receive {:telemetry, [:snakepit, :session, :ended], _,
                    %{session_id: ^id, reason: :deleted}},
                   5_000

    short = id <> "_short"
    {:ok, _} = Session.create(short, ttl: 1)

    assert_receive {:telemetry, [:snakepit, :session, :ended], _,
                    %{session_id: ^short, reason: :expired, node: node}},
                   10_000

    assert node == node()
  end
end
