defmodule Snakepit.Pool do
  @moduledoc """
  A named pool of Python worker processes.

  The pool process starts the workers (all at once), owns their handles,
  forwards their output to `Logger`, and restarts a worker that dies. It is
  *not* on the call path: ready workers are published in a protected ETS table
  and callers pick one themselves with `checkout/1` (an ETS read and an atomic
  counter), then talk to the worker directly through the NIF.

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

  alias Snakepit.{Error, Native, Python, Worker}
  alias Snakepit.Pool.Config

  @registry Snakepit.PoolRegistry
  @max_backoff 30_000

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

  @doc "Stops the pool and its workers (SIGTERM, then SIGKILL after the grace)."
  @spec stop(atom() | pid()) :: :ok
  def stop(pool) when is_pid(pool), do: GenServer.stop(pool, :normal, :infinity)

  def stop(name) when is_atom(name) do
    case Registry.lookup(@registry, name) do
      [{pid, _}] -> stop(pid)
      [] -> :ok
    end
  end

  @doc """
  Picks a ready worker of pool `name`, round robin, without a message to the
  pool process.
  """
  @spec checkout(atom()) :: {:ok, Worker.t()} | {:error, Error.t()}
  def checkout(name) do
    with_table(name, fn -> unknown_pool(name) end, fn table, counter, size ->
      start = :atomics.add_get(counter, 1, 1)
      find_ready(table, start, size, size, name)
    end)
  end

  defp find_ready(_table, _slot, _size, 0, name) do
    {:error,
     Error.new(:pool, "pool #{inspect(name)} has no ready worker", %{
       reason: :no_ready_worker,
       pool: name
     })}
  end

  defp find_ready(table, slot, size, left, name) do
    case :ets.lookup(table, rem(slot, size)) do
      [{_, worker}] -> {:ok, worker}
      [] -> find_ready(table, slot + 1, size, left - 1, name)
    end
  end

  @doc "The ready workers of pool `name`."
  @spec workers(atom()) :: [Worker.t()]
  def workers(name) do
    with_table(name, fn -> [] end, fn table, _counter, _size ->
      table |> :ets.tab2list() |> Enum.map(&elem(&1, 1))
    end)
  end

  # Runs `fun` with the pool's table, or `missing` when there is no such pool.
  # A pool that just stopped may still be registered for a moment while its
  # table is already gone: that counts as missing too.
  defp with_table(name, missing, fun) do
    case Registry.lookup(@registry, name) do
      [{_pid, {table, counter, size}}] ->
        try do
          fun.(table, counter, size)
        rescue
          ArgumentError -> missing.()
        end

      [] ->
        missing.()
    end
  end

  defp unknown_pool(name) do
    {:error,
     Error.new(:pool, "no pool named #{inspect(name)} is running", %{
       reason: :unknown_pool,
       pool: name
     })}
  end

  # -- server --

  @impl true
  def init(%Config{} = config) do
    Process.flag(:trap_exit, true)
    table = :ets.new(__MODULE__, [:set, :protected, read_concurrency: true])
    counter = :atomics.new(1, signed: false)

    case Registry.register(@registry, config.name, {table, counter, config.size}) do
      {:ok, _} ->
        state = %{config: config, table: table, starting: %{}, ready: %{}, backoff: %{}}
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
    id = "#{config.name}-#{slot + 1}"

    spec = %{
      worker_id: id,
      executable: config.python,
      args: Python.worker_args(config.adapter, id),
      env: Python.worker_env(config.python_path, config.env),
      cwd: config.cwd,
      start_timeout_ms: config.start_timeout
    }

    ref = make_ref()

    case Native.worker_spawn(spec, self(), ref) do
      {:ok, {resource, os_pid}} ->
        entry = %{slot: slot, id: id, os_pid: os_pid, resource: resource}
        {:ok, put_in(state.starting[ref], entry)}

      {:error, message} ->
        {:error, Error.new(:worker, "cannot start worker #{id}: #{message}", %{worker_id: id})}
    end
  end

  @impl true
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

  def handle_info(_other, state), do: {:noreply, state}

  defp handle_event(ref, {:log, stream, line}, state) do
    id = worker_id(state, ref)
    Logger.info("[#{id} #{stream}] #{line}", snakepit_worker: id)
    {:ok, state}
  end

  defp handle_event(ref, {:ready, port}, state) do
    case Map.pop(state.starting, ref) do
      {nil, _} ->
        {:ok, state}

      {entry, starting} ->
        worker = %Worker{
          id: entry.id,
          pool: state.config.name,
          os_pid: entry.os_pid,
          port: port,
          resource: entry.resource
        }

        :ets.insert(state.table, {entry.slot, worker})

        {:ok,
         %{
           state
           | starting: starting,
             ready: Map.put(state.ready, ref, entry),
             backoff: Map.delete(state.backoff, entry.slot)
         }}
    end
  end

  defp handle_event(ref, {:start_failed, message}, state) do
    case Map.pop(state.starting, ref) do
      {nil, _} ->
        {:ok, state}

      {entry, starting} ->
        state = %{state | starting: starting}
        {:start_failed, message, schedule_restart(state, entry.slot)}
    end
  end

  defp handle_event(ref, {:exit, status}, state) do
    case Map.pop(state.ready, ref) do
      {nil, _} ->
        {:ok, state}

      {entry, ready} ->
        Logger.error(
          "snakepit worker #{entry.id} (os pid #{entry.os_pid}) exited: #{inspect(status)}; restarting"
        )

        :ets.delete(state.table, entry.slot)
        {:ok, schedule_restart(%{state | ready: ready}, entry.slot)}
    end
  end

  defp handle_event(_ref, _event, state), do: {:ok, state}

  defp worker_id(state, ref) do
    case state.starting[ref] || state.ready[ref] do
      %{id: id} -> id
      nil -> "worker"
    end
  end

  defp schedule_restart(state, slot) do
    delay = Map.get(state.backoff, slot, 0)
    Process.send_after(self(), {:restart, slot}, delay)
    next = min(max(delay * 2, 100), @max_backoff)
    %{state | backoff: Map.put(state.backoff, slot, next)}
  end

  @impl true
  def terminate(_reason, state) do
    stop_workers(state)
  end

  # SIGTERM every worker, then wait for their exits, so that when the pool is
  # gone its processes are gone too.
  defp stop_workers(state) do
    :ets.delete_all_objects(state.table)
    workers = Map.merge(state.starting, state.ready)

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
