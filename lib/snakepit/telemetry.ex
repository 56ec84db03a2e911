defmodule Snakepit.Telemetry do
  @moduledoc """
  Snakepit's [`:telemetry`](https://hexdocs.pm/telemetry) events, for
  dashboards, alerts and traces.

  Snakepit has no dependencies, so it does not bring `:telemetry`: it emits
  events when the application that hosts it has it (Phoenix, Ecto, Finch and
  most libraries bring it), as decided when the `:snakepit` application
  starts, and costs nothing otherwise. Attach handlers as usual:

      :telemetry.attach("log-slow-calls", [:snakepit, :call, :stop], &MyApp.Metrics.handle/4, nil)

  ## Spans

  A call, a stream, a duplex call and a universal call are spans, emitted
  the way `:telemetry.span/3` emits them: a `:start` event, then `:stop`, or
  `:exception` when the caller's code raised (a callback, an input source).
  A call that fails with an error is a `:stop` with `outcome: :error`.

  | event | measurements | metadata |
  |---|---|---|
  | `[:snakepit, :call, :start]` | `monotonic_time`, `system_time` | `pool`, `tool`, `worker_id`, `session_id`, `node`, `telemetry_span_context` |
  | `[:snakepit, :call, :stop]` | `duration`, `monotonic_time` | the start's, `outcome` (`:ok` or `:error`), `error` (a `Snakepit.Error` or `nil`) |
  | `[:snakepit, :call, :exception]` | `duration`, `monotonic_time` | the start's, `kind`, `reason`, `stacktrace` |
  | `[:snakepit, :stream, :start \\| :stop \\| :exception]` | as for `:call`; `:stop` also `chunks` (chunks that reached the callback) and `bytes` (the size of the chunks' payloads received, as the worker sent them: JSON text or raw bytes; after a halt, chunks received but not handed to the callback count too) | as for `:call` |
  | `[:snakepit, :duplex, :start \\| :stop \\| :exception]` | as for `:stream` | as for `:call` |
  | `[:snakepit, :universal_call, :start \\| :stop \\| :exception]` | as for `:call` | `pool`, `module` (a module name, or the ref's type), `function`, `action` (`:call` or `:attr`), `session_id`, `node` and, once known, `worker_id`; `:stop` adds `outcome`, `error` |

  A call's span is emitted on the node whose worker runs it (`node`); a
  stream's and a duplex call's on the caller's node, `node` naming the node
  that runs it; `worker_id` is that of the worker that ran it (`nil` if none
  was had). `duration` and `monotonic_time` are in `:native` time units
  (`System.convert_time_unit/3`). A universal call's operations on the
  worker (`snakepit.call`, `snakepit.next`, ...) are also `:call` spans.

  ## Single events

  | event | measurements | metadata |
  |---|---|---|
  | `[:snakepit, :checkout, :wait]` | `duration` (time in the pool's queue) | `pool`, `worker_id` (the worker granted, else `nil`), `outcome` (`:granted`, or the error's reason: `:checkout_timeout`, `:timeout` when the call's own deadline came first, `:session_worker_unavailable`, ...) |
  | `[:snakepit, :pool, :saturated]` | `queued` (callers already waiting) | `pool` |
  | `[:snakepit, :worker, :start]` | `system_time` | `pool`, `worker_id`, `os_pid` |
  | `[:snakepit, :worker, :ready]` | `duration` (from start to ready) | `pool`, `worker_id`, `os_pid` |
  | `[:snakepit, :worker, :exit]` | `uptime` (native units) | `pool`, `worker_id`, `os_pid`, `status` (`{:exit_status, n}` or `{:signal, n}`), `restart` (`true`: the pool replaces it; `false`: it was stopped on purpose) |
  | `[:snakepit, :worker, :restart]` | `delay` (ms before the replacement starts) | `pool`, `worker_id` |
  | `[:snakepit, :worker, :recycle]` | `uptime` (native units) | `pool`, `worker_id`, `os_pid`, `reason` (`:max_requests`, `:worker_ttl`, `:max_memory` or `:stuck_tool`) |
  | `[:snakepit, :session, :created]` | `system_time` | `session_id`, `node` |
  | `[:snakepit, :session, :ended]` | `system_time` | `session_id`, `node`, `reason` (`:expired` or `:deleted`) |

  `[:snakepit, :checkout, :wait]` is emitted only for calls that waited in
  the queue (a call that finds a free worker waits for nothing).
  `[:snakepit, :session, :created]` is emitted for sessions created from
  Elixir (`Snakepit.Session.create/2`, or the first call in a session).
  """

  # Not a dependency: called only when it is there (see `setup/0`).
  @compile {:no_warn_undefined, :telemetry}

  @enabled {__MODULE__, :enabled}

  @doc false
  # Decides, once, whether `:telemetry` is there; the application calls it
  # when it starts.
  @spec setup() :: boolean()
  def setup do
    enabled = Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3)
    # In a release it may not be started yet: its handler table comes with it.
    if enabled, do: Application.ensure_all_started(:telemetry)

    :persistent_term.put(@enabled, enabled)
    enabled
  end

  @doc "Whether Snakepit emits events (`:telemetry` was there when it started)."
  @spec enabled?() :: boolean()
  def enabled?, do: :persistent_term.get(@enabled, false)

  @doc false
  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    if enabled?(), do: :telemetry.execute(event, measurements, metadata)
    :ok
  end

  @doc false
  # Runs `fun` as span `prefix` with `metadata`. `fun` returns `{result,
  # stop_metadata}`: the stop event's metadata is the start's merged with it
  # (`outcome` and `error` are added from an `{:error, %Snakepit.Error{}}`
  # or `:ok`/`{:ok, _}` result unless given).
  @spec span([atom()], map(), (() -> {result, map()})) :: result when result: term()
  def span(prefix, metadata, fun) do
    if enabled?() do
      run_span(prefix, Map.put(metadata, :telemetry_span_context, make_ref()), fun)
    else
      {result, _stop_metadata} = fun.()
      result
    end
  end

  defp run_span(prefix, metadata, fun) do
    start = System.monotonic_time()

    :telemetry.execute(
      prefix ++ [:start],
      %{monotonic_time: start, system_time: System.system_time()},
      metadata
    )

    try do
      fun.()
    catch
      kind, reason ->
        stop = System.monotonic_time()

        :telemetry.execute(
          prefix ++ [:exception],
          %{duration: stop - start, monotonic_time: stop},
          Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: __STACKTRACE__})
        )

        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      {result, stop_metadata} ->
        stop = System.monotonic_time()
        {measurements, stop_metadata} = Map.pop(stop_metadata, :measurements, %{})

        :telemetry.execute(
          prefix ++ [:stop],
          Map.merge(measurements, %{duration: stop - start, monotonic_time: stop}),
          metadata |> Map.merge(outcome(result)) |> Map.merge(stop_metadata)
        )

        result
    end
  end

  defp outcome({:error, error}), do: %{outcome: :error, error: error}
  defp outcome(_ok), do: %{outcome: :ok, error: nil}
end
