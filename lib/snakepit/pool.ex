defmodule Snakepit.Pool do
  @moduledoc """
  A named pool of Python worker processes.

  The pool process starts the workers (all at once), owns their handles,
  logs their output (rate-limited per worker: see the `:output_*` options of
  `Snakepit.Pool.Config`; the NIF hands it over one batch at a time, so a
  worker printing without end cannot flood this process), restarts a worker
  that dies (with backoff), recycles workers after `:max_requests` or
  `:worker_ttl`, past `:max_memory_mb`, or when a cancelled tool does not
  stop within `:cancel_grace`, and keeps
  the queue of callers waiting for a free worker (`Snakepit.Pool.Waiters`:
  constant work per event, however many wait). It is *not* on the call path
  when a worker is free: ready workers are published in a protected ETS table,
  each worker counts its requests in flight with atomics, and a caller takes
  a slot itself (see `Snakepit.Pool.Checkout`).

  Pools are normally started by the `:snakepit` application from the `:pools`
  config; a pool can also live in your own supervision tree:

      children = [
        {Snakepit.Pool, name: :nlp, size: 4, adapter: "my_app.nlp.NlpAdapter",
         python_path: ["priv/python"]}
      ]

  `start_link/1` returns only when every worker is ready, or fails with
  `{:error, %Snakepit.Error{}}` explaining why (e.g. the adapter's import
  error), so a broken pool never starts silently. See `Snakepit.Pool.Config`
  for the options.
  """

  use GenServer
  require Logger

  alias Snakepit.{Call, Error, Native, Python, Telemetry, Worker}
  alias Snakepit.Pool.{Config, Waiters}

  @registry Snakepit.PoolRegistry
  @max_backoff 30_000
  @stable_uptime 10_000
  # How often workers are measured against :max_memory_mb.
  @memory_check_ms 1_000

  # Indexes of the pool's :counters.
  @requests 1
  @errors 2
  @restarts 3
  @recycles 4

  @typedoc """
  What callers read about a pool without asking its process: the ETS tables
  of ready workers (`{slot, worker}`) and of session bindings
  (`{session_id, worker_uid, slot}`), the round-robin and queue counters.
  """
  @type info :: %{
          name: atom(),
          pid: pid(),
          workers: :ets.tid(),
          sessions: :ets.tid(),
          size: pos_integer(),
          next: :atomics.atomics_ref(),
          queued: :atomics.atomics_ref(),
          counters: :counters.counters_ref(),
          max_queue: non_neg_integer(),
          checkout_timeout: pos_integer() | nil,
          affinity: atom(),
          local_only: boolean()
        }

  @doc false
  # The pools running on this node.
  @spec running() :: [info()]
  def running, do: Registry.select(@registry, [{{:_, :_, :"$1"}, [], [:"$1"]}])

  @doc false
  # A session ended (deleted or expired): no pool keeps its worker binding.
  @spec forget_session(String.t()) :: :ok
  def forget_session(session_id) do
    for info <- running() do
      try do
        :ets.delete(info.sessions, session_id)
      rescue
        # The pool is stopping: its tables are gone with its bindings.
        ArgumentError -> :ok
      end
    end

    :ok
  end

  @doc false
  def child_spec(opts) do
    %{
      id: {__MODULE__, Keyword.get(opts, :name)},
      start: {__MODULE__, :start_link, [opts]},
      shutdown: :infinity,
      type: :worker
    }
  end

  @doc "Starts a pool; returns once all workers are ready."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    with {:ok, config} <- Config.new(opts) do
      GenServer.start_link(__MODULE__, config)
    end
  end

  @doc """
  Stops the pool and its workers (SIGTERM, then SIGKILL after the grace);
  returns once they are gone.

  A pool started under a supervisor is restarted after this if its restart
  strategy says so (`:permanent`, the default for children): to stop such a
  pool for good, use `Supervisor.terminate_child/2` with the id
  `{Snakepit.Pool, name}`.
  """
  @spec stop(atom() | pid()) :: :ok
  def stop(pool) when is_pid(pool) do
    GenServer.stop(pool, :normal, :infinity)
  catch
    # Already gone.
    :exit, _ -> :ok
  end

  def stop(name) when is_atom(name) do
    case lookup(name) do
      {:ok, info} -> stop(info.pid)
      {:error, _} -> :ok
    end
  end

  @doc "The pool's shared tables and counters, or an `:unknown_pool` error."
  @spec lookup(atom()) :: {:ok, info()} | {:error, Error.t()}
  def lookup(name) do
    case Registry.lookup(@registry, name) do
      [{_pid, info}] ->
        {:ok, info}

      [] ->
        {:error,
         Error.new(:pool, "no pool named #{inspect(name)} is running", %{
           reason: :unknown_pool,
           pool: name
         })}
    end
  end

  @doc "The ready workers of pool `name`."
  @spec workers(atom()) :: [Worker.t()]
  def workers(name) do
    with {:ok, info} <- lookup(name) do
      info |> ready_workers() |> Enum.sort_by(& &1.slot)
    else
      _ -> []
    end
  end

  @doc false
  # Ready workers from the table; a pool that just stopped may still be
  # registered for a moment while its table is gone: then there are none.
  def ready_workers(info) do
    info.workers |> :ets.tab2list() |> Enum.map(&elem(&1, 1))
  rescue
    ArgumentError -> []
  end

  @doc false
  def count(info, :request), do: :counters.add(info.counters, @requests, 1)
  def count(info, :error), do: :counters.add(info.counters, @errors, 1)

  @doc false
  # Request slots free in the pool now: none while callers wait in its queue.
  @spec free_slots(info()) :: non_neg_integer()
  def free_slots(info) do
    if :atomics.get(info.queued, 1) > 0 do
      0
    else
      info
      |> ready_workers()
      |> Enum.reduce(0, fn worker, free ->
        load = Native.worker_load(worker.resource)
        free + max(load.capacity - load.in_flight, 0)
      end)
    end
  end

  @doc """
  Numbers about pool `name`: `:workers` (ready), `:busy` (with a request in
  flight), `:in_flight`, `:queued` (callers waiting), `:requests`, `:errors`,
  `:restarts`, `:recycles`, and `:output_dropped_lines` /
  `:output_dropped_bytes` (worker output over the rate limit, summed over
  the ready workers).
  """
  @spec stats(atom()) :: {:ok, map()} | {:error, Error.t()}
  def stats(name) do
    with {:ok, info} <- lookup(name) do
      loads = Enum.map(ready_workers(info), &Native.worker_load(&1.resource))

      {:ok,
       %{
         workers: length(loads),
         busy: Enum.count(loads, &(&1.in_flight > 0)),
         in_flight: loads |> Enum.map(& &1.in_flight) |> Enum.sum(),
         queued: :atomics.get(info.queued, 1),
         requests: :counters.get(info.counters, @requests),
         errors: :counters.get(info.counters, @errors),
         restarts: :counters.get(info.counters, @restarts),
         recycles: :counters.get(info.counters, @recycles),
         output_dropped_lines: loads |> Enum.map(& &1.output_dropped_lines) |> Enum.sum(),
         output_dropped_bytes: loads |> Enum.map(& &1.output_dropped_bytes) |> Enum.sum()
       }}
    end
  end

  @doc """
  One map per worker slot of pool `name`: `:id`, `:slot`, `:os_pid`, `:port`,
  `:address` (`"127.0.0.1:<port>"` or `"unix:@<name>"`; `nil` while starting),
  `:status` (`:ready` or `:starting`), `:in_flight`, `:served`, `:uptime_ms`,
  `:memory_mb` (resident memory, from `/proc`; `nil` where it cannot be read),
  `:output_dropped_lines` and `:output_dropped_bytes` (its stdout/stderr
  lines dropped by the rate limit since it started),
  `:last_error` (why the slot's previous worker ended, if it did) and
  `:restart_backoff_ms` (how long the next restart of the slot would wait:
  it doubles each time a worker dies soon after starting, up to 30 s).
  """
  @spec worker_info(atom()) :: {:ok, [map()]} | {:error, Error.t()}
  def worker_info(name) do
    with {:ok, info} <- lookup(name) do
      try do
        {:ok, GenServer.call(info.pid, :worker_info)}
      catch
        # Still starting its workers, or just stopped.
        :exit, _ ->
          {:error,
           Error.new(:pool, "pool #{inspect(name)} is not serving (starting or stopped)", %{
             reason: :not_ready,
             pool: name
           })}
      end
    end
  end

  @doc """
  Asks every ready worker of pool `name` to describe itself (a gRPC round
  trip) and reports `%{worker_id => :ok | {:error, %Snakepit.Error{}}}`.
  """
  @spec health(atom(), timeout()) :: {:ok, map()} | {:error, Error.t()}
  def health(name, timeout \\ 5_000) do
    with {:ok, info} <- lookup(name) do
      checks =
        info
        |> ready_workers()
        |> Task.async_stream(&{&1.id, Call.describe(&1, timeout)}, timeout: :infinity)
        |> Map.new(fn
          {:ok, {id, {:ok, _}}} -> {id, :ok}
          {:ok, {id, {:error, error}}} -> {id, {:error, error}}
        end)

      {:ok, checks}
    end
  end

  # -- server --

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)

    info = %{
      name: config.name,
      pid: self(),
      workers: :ets.new(__MODULE__, [:set, :protected, read_concurrency: true]),
      sessions: :ets.new(Snakepit.Sessions, [:set, :public, read_concurrency: true]),
      size: config.size,
      next: :atomics.new(1, signed: false),
      queued: :atomics.new(1, signed: true),
      counters: :counters.new(4, [:write_concurrency]),
      max_queue: config.max_queue,
      checkout_timeout: config.checkout_timeout,
      affinity: config.affinity,
      local_only: config.local_only
    }

    case Registry.register(@registry, config.name, info) do
      {:ok, _} ->
        unless config.local_only, do: Snakepit.Cluster.join_pool(config.name, self())

        state = %{
          config: config,
          info: info,
          # ref => entry, by lifecycle stage
          starting: %{},
          ready: %{},
          draining: %{},
          backoff: %{},
          last_error: %{},
          waiters: Waiters.new()
        }

        if config.max_memory_mb, do: send(self(), :check_memory)
        start_all(state)

      {:error, {:already_registered, _}} ->
        {:stop,
         Error.new(:validation, "a pool named #{inspect(config.name)} is already running", %{
           reason: :duplicate_pool,
           pool: config.name
         })}
    end
  end

  defp start_all(state) do
    spawned =
      Enum.reduce_while(0..(state.config.size - 1), {:ok, state}, fn slot, {:ok, state} ->
        case spawn_worker(state, slot) do
          {:ok, state} -> {:cont, {:ok, state}}
          {:error, error} -> {:halt, {:error, error, state}}
        end
      end)

    case spawned do
      {:ok, state} -> await_ready(state)
      {:error, error, state} -> fail_start(state, error)
    end
  end

  defp await_ready(%{starting: starting} = state) when map_size(starting) == 0,
    do: {:ok, state}

  defp await_ready(state) do
    receive do
      {ref, event} when is_map_key(state.starting, ref) ->
        case handle_event(ref, event, state) do
          {:ok, state} -> await_ready(state)
          {:start_failed, message, state} -> fail_start(state, start_error(state, message))
        end
    end
  end

  defp fail_start(state, error) do
    stop_workers(state)
    {:stop, error}
  end

  defp start_error(state, message) do
    Error.new(:worker, "pool #{inspect(state.config.name)} could not start: #{message}", %{
      reason: :start_failed,
      pool: state.config.name
    })
  end

  defp spawn_worker(state, slot) do
    config = state.config
    id = worker_id(config, slot)

    spec = %{
      worker_id: id,
      executable: config.python,
      args: Python.worker_args(config.worker_module, config.adapter, id, config.transport),
      env: [
        {"SNAKEPIT_CANCEL_GRACE_MS", Integer.to_string(config.cancel_grace)},
        {"SNAKEPIT_UNIVERSAL", Config.universal_policy(config)}
        | Python.worker_env(config.python_path, config.env)
      ],
      bridge_address: Snakepit.Bridge.worker_address(),
      cwd: config.cwd,
      start_timeout_ms: config.start_timeout,
      capacity: config.concurrency,
      max_requests: config.max_requests || 0,
      max_message_bytes: config.max_message_bytes,
      output_lines_per_second: config.output_lines_per_second,
      output_bytes_per_second: config.output_bytes_per_second
    }

    ref = make_ref()

    case Native.worker_spawn(spec, self(), ref) do
      {:ok, {resource, os_pid}} ->
        worker_event(:start, %{system_time: System.system_time()}, config.name, id, os_pid)

        entry = %{
          slot: slot,
          id: id,
          os_pid: os_pid,
          resource: resource,
          worker: nil,
          spawned_at: System.monotonic_time()
        }

        {:ok, put_in(state.starting[ref], entry)}

      {:error, message} ->
        {:error, Error.new(:worker, "cannot start worker #{id}: #{message}", %{worker_id: id})}
    end
  end

  @impl true
  def handle_call(:worker_info, _from, state) do
    now = System.monotonic_time(:millisecond)

    ready =
      for {_ref, %{worker: worker}} <- state.ready do
        load = Native.worker_load(worker.resource)

        %{
          id: worker.id,
          slot: worker.slot,
          status: :ready,
          os_pid: worker.os_pid,
          port: worker.port,
          address: worker.address,
          in_flight: load.in_flight,
          served: load.served,
          uptime_ms: now - worker.started_at,
          memory_mb: memory_mb(worker.os_pid),
          output_dropped_lines: load.output_dropped_lines,
          output_dropped_bytes: load.output_dropped_bytes,
          last_error: state.last_error[worker.slot],
          restart_backoff_ms: Map.get(state.backoff, worker.slot, 0)
        }
      end

    starting =
      for {_ref, entry} <- state.starting do
        load = Native.worker_load(entry.resource)

        %{
          id: entry.id,
          slot: entry.slot,
          status: :starting,
          os_pid: entry.os_pid,
          port: nil,
          address: nil,
          in_flight: 0,
          served: 0,
          uptime_ms: 0,
          memory_mb: memory_mb(entry.os_pid),
          output_dropped_lines: load.output_dropped_lines,
          output_dropped_bytes: load.output_dropped_bytes,
          last_error: state.last_error[entry.slot],
          restart_backoff_ms: Map.get(state.backoff, entry.slot, 0)
        }
      end

    {:reply, Enum.sort_by(ready ++ starting, & &1.slot), state}
  end

  def handle_call({:cancel_checkout, ref}, _from, state) do
    {:reply, :ok, drop_waiter(state, ref)}
  end

  defp memory_mb(os_pid) do
    with kib when is_integer(kib) <- resident_kib(os_pid), do: Float.round(kib / 1024, 1)
  end

  @impl true
  def handle_info({:checkout, pid, ref, target}, state) do
    if target == :any or Enum.any?(Map.values(state.ready), &(&1.worker.uid == target)) do
      waiters = Waiters.add(state.waiters, ref, pid, Process.monitor(pid), target)
      {:noreply, serve_queue(%{state | waiters: waiters})}
    else
      # The worker died or is being recycled since the caller looked it up.
      :atomics.sub(state.info.queued, 1, 1)
      send(pid, {ref, {:error, Snakepit.Pool.Checkout.session_worker_unavailable()}})
      {:noreply, state}
    end
  end

  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state) do
    case Waiters.remove_monitored(state.waiters, monitor) do
      {nil, _} ->
        {:noreply, state}

      {_waiter, waiters} ->
        :atomics.sub(state.info.queued, 1, 1)
        {:noreply, %{state | waiters: waiters}}
    end
  end

  def handle_info({ref, event}, state) when is_reference(ref) do
    case handle_event(ref, event, state) do
      {:ok, state} ->
        {:noreply, state}

      {:start_failed, message, state} ->
        Logger.error("snakepit pool #{inspect(state.config.name)}: #{message}")
        {:noreply, state}
    end
  end

  def handle_info({:restart, slot}, state) do
    case spawn_worker(state, slot) do
      {:ok, state} ->
        {:noreply, state}

      {:error, error} ->
        Logger.error(Exception.message(error))
        {:noreply, schedule_restart(state, slot)}
    end
  end

  # Workers past :max_memory_mb are recycled.
  # Workers past :max_memory_mb are recycled: the largest one per check, so
  # that workers growing alike are not all replaced at once.
  def handle_info(:check_memory, state) do
    limit_kib = state.config.max_memory_mb * 1024

    over =
      for {ref, entry} <- state.ready,
          (kib = resident_kib(entry.os_pid)) != nil and kib > limit_kib,
          do: {ref, entry, kib}

    state =
      case Enum.max_by(over, &elem(&1, 2), fn -> nil end) do
        nil ->
          state

        {ref, entry, kib} ->
          Logger.warning(
            "snakepit worker #{entry.id} (os pid #{entry.os_pid}) is recycled: " <>
              "#{div(kib, 1024)} MiB resident, over max_memory_mb #{state.config.max_memory_mb}"
          )

          recycle(state, ref, :max_memory)
      end

    Process.send_after(self(), :check_memory, @memory_check_ms)
    {:noreply, state}
  end

  def handle_info({:expire, ref}, state) do
    case state.ready[ref] do
      nil ->
        {:noreply, state}

      _entry ->
        {:noreply, recycle(state, ref, :worker_ttl)}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # Acknowledged after logging, so the NIF sends the next batch only once
  # Logger took this one: the pace of Logger bounds what waits here.
  defp handle_event(_ref, {:output, id, lines, dropped, ack}, state) do
    Enum.each(lines, fn
      {:log, record} -> log_record(record, id, state.config.name)
      {stream, line} -> Logger.info("[#{id} #{stream}] #{line}", snakepit_worker: id)
    end)

    with {count, bytes} <- dropped do
      Logger.warning(
        "[#{id}] dropped #{count} lines (#{bytes} bytes) of worker output " <>
          "(over #{state.config.output_lines_per_second} lines or " <>
          "#{state.config.output_bytes_per_second} bytes per second)",
        snakepit_worker: id
      )
    end

    Native.output_ack(ack)
    {:ok, state}
  end

  defp handle_event(ref, {:ready, port, address}, state) do
    case Map.pop(state.starting, ref) do
      {nil, _} ->
        {:ok, state}

      {entry, starting} ->
        worker = %Worker{
          id: entry.id,
          uid: System.unique_integer([:positive]),
          slot: entry.slot,
          pool: state.config.name,
          os_pid: entry.os_pid,
          port: port,
          address: address,
          started_at: System.monotonic_time(:millisecond),
          resource: entry.resource
        }

        :ets.insert(state.info.workers, {entry.slot, worker})
        ready_in = System.monotonic_time() - entry.spawned_at
        worker_event(:ready, %{duration: ready_in}, worker.pool, worker.id, worker.os_pid)

        if ttl = state.config.worker_ttl do
          Process.send_after(self(), {:expire, ref}, ttl)
        end

        state = %{
          state
          | starting: starting,
            ready: Map.put(state.ready, ref, %{entry | worker: worker})
        }

        {:ok, serve_queue(state)}
    end
  end

  defp handle_event(ref, {:start_failed, message}, state) do
    case Map.pop(state.starting, ref) do
      {nil, _} ->
        {:ok, state}

      {entry, starting} ->
        state = %{
          state
          | starting: starting,
            last_error: Map.put(state.last_error, entry.slot, message)
        }

        {:start_failed, message, schedule_restart(state, entry.slot)}
    end
  end

  defp handle_event(_ref, :capacity, state), do: {:ok, serve_queue(state)}

  defp handle_event(ref, :recycle, state) do
    if Map.has_key?(state.ready, ref),
      do: {:ok, recycle(state, ref, :max_requests)},
      else: {:ok, state}
  end

  # The worker asks for it: a cancelled tool did not stop within :cancel_grace.
  defp handle_event(ref, {:recycle, reason}, state) do
    case state.ready[ref] do
      nil ->
        {:ok, state}

      entry ->
        Logger.warning(
          "snakepit worker #{entry.id} (os pid #{entry.os_pid}) is recycled: #{reason}"
        )

        {:ok, recycle(state, ref, :stuck_tool)}
    end
  end

  defp handle_event(ref, :drained, state) do
    if entry = state.draining[ref] do
      Native.worker_stop(entry.resource, state.config.stop_grace)
    end

    {:ok, state}
  end

  defp handle_event(ref, {:exit, status}, state) do
    cond do
      entry = state.draining[ref] ->
        exited(entry, status, false)
        {:ok, %{state | draining: Map.delete(state.draining, ref)}}

      entry = state.ready[ref] ->
        exited(entry, status, true)

        Logger.error(
          "snakepit worker #{entry.id} (os pid #{entry.os_pid}) exited: #{inspect(status)}; restarting"
        )

        :ets.delete(state.info.workers, entry.slot)
        :counters.add(state.info.counters, @restarts, 1)

        # A worker that stayed up a while earns a restart without delay; one
        # that dies right after starting backs off further each time.
        uptime = System.monotonic_time(:millisecond) - entry.worker.started_at

        backoff =
          if uptime >= @stable_uptime,
            do: Map.delete(state.backoff, entry.slot),
            else: state.backoff

        state =
          %{
            state
            | backoff: backoff,
              ready: Map.delete(state.ready, ref),
              last_error: Map.put(state.last_error, entry.slot, "exited: #{inspect(status)}")
          }
          |> fail_waiters_for(entry.worker.uid)

        {:ok, schedule_restart(state, entry.slot)}

      true ->
        {:ok, state}
    end
  end

  defp handle_event(_ref, _event, state), do: {:ok, state}

  # A Python log record, at its level, with its fields as metadata.
  defp log_record(record, worker_id, pool) do
    message =
      if record.traceback,
        do: [record.message, ?\n, record.traceback],
        else: record.message

    metadata =
      [
        pool: pool,
        worker_id: worker_id,
        snakepit_worker: worker_id,
        python_logger: record.logger,
        tool: record.tool,
        session_id: record.session_id,
        call_metadata: if(record.metadata != %{}, do: record.metadata)
      ]
      |> Enum.reject(fn {_key, value} -> is_nil(value) end)

    Logger.log(record.level, message, metadata)
  end

  defp exited(entry, status, restart) do
    uptime = System.monotonic_time() - entry.spawned_at
    metadata = %{status: status, restart: restart}
    worker_event(:exit, %{uptime: uptime}, entry.worker.pool, entry.id, entry.os_pid, metadata)
  end

  defp worker_event(event, measurements, pool, id, os_pid, metadata \\ %{}) do
    Telemetry.execute(
      [:snakepit, :worker, event],
      measurements,
      Map.merge(%{pool: pool, worker_id: id, os_pid: os_pid}, metadata)
    )
  end

  # Takes the worker out of rotation, starts its replacement, and stops it
  # once its requests in flight are done.
  defp recycle(state, ref, reason) do
    {entry, ready} = Map.pop(state.ready, ref)
    uptime = System.monotonic_time() - entry.spawned_at
    metadata = %{reason: reason}
    worker_event(:recycle, %{uptime: uptime}, state.config.name, entry.id, entry.os_pid, metadata)
    Native.worker_drain(entry.resource)
    :ets.delete(state.info.workers, entry.slot)
    :counters.add(state.info.counters, @recycles, 1)

    state =
      %{state | ready: ready, draining: Map.put(state.draining, ref, entry)}
      |> fail_waiters_for(entry.worker.uid)

    case spawn_worker(state, entry.slot) do
      {:ok, state} ->
        state

      {:error, error} ->
        Logger.error(Exception.message(error))
        schedule_restart(state, entry.slot)
    end
  end

  # A slot's worker id: the same across restarts.
  defp worker_id(config, slot), do: "#{config.name}-#{slot + 1}"

  # Resident memory of an OS process in KiB (`VmRSS`), or nil where `/proc`
  # does not tell.
  defp resident_kib(os_pid) do
    with {:ok, status} <- File.read("/proc/#{os_pid}/status"),
         [_, kib] <- Regex.run(~r/VmRSS:\s+(\d+) kB/, status) do
      String.to_integer(kib)
    else
      _ -> nil
    end
  end

  defp schedule_restart(state, slot) do
    delay = Map.get(state.backoff, slot, 0)

    Telemetry.execute([:snakepit, :worker, :restart], %{delay: delay}, %{
      pool: state.config.name,
      worker_id: worker_id(state.config, slot)
    })

    Process.send_after(self(), {:restart, slot}, delay)
    next = min(max(delay * 2, 100), @max_backoff)
    %{state | backoff: Map.put(state.backoff, slot, next)}
  end

  # -- the queue of callers waiting for a worker (Snakepit.Pool.Waiters) --

  # Grants free slots to waiters, each worker to its own and the `:any`
  # waiters in arrival order; the work grows with the workers and the
  # grants, not with the callers that wait.
  defp serve_queue(state) do
    waiting = Waiters.size(state.waiters)

    if waiting == 0 do
      state
    else
      state = Enum.reduce(Map.values(state.ready), state, &serve_worker(&2, &1))
      if Waiters.size(state.waiters) < waiting, do: forget_leases()
      state
    end
  end

  # A lease granted lives on in this process's heap until its next garbage
  # collection; a waiter that dies before it takes its lease would leave the
  # slot taken until then (the lease's destructor gives it back once no term
  # refers to it). Collecting now leaves the waiter's message the only
  # reference. Only grants from the queue pay this, not the calls that find
  # a free worker.
  defp forget_leases, do: :erlang.garbage_collect()

  # A slot is taken first, then the next waiter: a worker without a free
  # slot costs no look at the queue.
  defp serve_worker(state, entry) do
    case Native.lease_acquire(entry.worker.resource) do
      {:ok, lease} ->
        case Waiters.next_for(state.waiters, entry.worker.uid) do
          {nil, waiters} ->
            Native.lease_release(lease)
            %{state | waiters: waiters}

          {waiter, waiters} ->
            :atomics.sub(state.info.queued, 1, 1)
            grant(waiter, entry.worker, lease)
            serve_worker(%{state | waiters: waiters}, entry)
        end

      _busy_or_draining ->
        state
    end
  end

  # The lease travels in the message; a waiter already gone (its monitor
  # fired) gets none, and the slot goes back at once.
  defp grant(waiter, worker, lease) do
    if Process.demonitor(waiter.monitor, [:flush, :info]) do
      send(waiter.pid, {waiter.ref, {:granted, worker, lease}})
    else
      Native.lease_release(lease)
    end
  end

  defp drop_waiter(state, ref) do
    case Waiters.remove(state.waiters, ref) do
      {nil, _} ->
        state

      {waiter, waiters} ->
        Process.demonitor(waiter.monitor, [:flush])
        :atomics.sub(state.info.queued, 1, 1)
        %{state | waiters: waiters}
    end
  end

  # Waiters for a worker that is gone (or being recycled) will never be served.
  defp fail_waiters_for(state, uid) do
    {failed, waiters} = Waiters.take_all_for(state.waiters, uid)

    Enum.each(failed, fn waiter ->
      Process.demonitor(waiter.monitor, [:flush])
      :atomics.sub(state.info.queued, 1, 1)

      send(
        waiter.pid,
        {waiter.ref, {:error, Snakepit.Pool.Checkout.session_worker_unavailable()}}
      )
    end)

    %{state | waiters: waiters}
  end

  # -- stopping --

  @impl true
  def terminate(_reason, state) do
    stop_workers(state)
  end

  # SIGTERM every worker, then wait for their exits, so that when the pool is
  # gone its processes are gone too.
  defp stop_workers(state) do
    :ets.delete_all_objects(state.info.workers)
    workers = state.starting |> Map.merge(state.ready) |> Map.merge(state.draining)

    Enum.each(workers, fn {_ref, entry} ->
      Native.worker_stop(entry.resource, state.config.stop_grace)
    end)

    await_exits(Map.keys(workers), state.config.stop_grace + 5_000)
  end

  defp await_exits([], _timeout), do: :ok

  defp await_exits(refs, timeout) do
    receive do
      {ref, {:exit, _}} -> await_exits(List.delete(refs, ref), timeout)
      {ref, {:start_failed, _}} -> await_exits(List.delete(refs, ref), timeout)
    after
      timeout -> :ok
    end
  end
end
