defmodule Snakepit.Objects.Keeper do
  @moduledoc false
  # Releases the Python objects of a scope when its owner ends: the refs a
  # process made outside a session when the process exits, the refs of a
  # session when the session ends (deleted or expired).
  #
  # A call that made refs records `{scope, pool, worker uid, slot}` in a
  # public table, in the caller's process; only the first record of a scope
  # on a worker sends this process a message (to monitor the caller). When
  # the owner ends, a task asks each recorded worker to release the scope;
  # a worker that is gone took the objects with it.

  use GenServer

  alias Snakepit.Objects

  @table __MODULE__

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Process `owner` (of this node or another) made refs on `worker`, in
  # session `session_id` (`""` for none).
  @spec track(String.t(), Snakepit.Worker.t(), pid()) :: :ok
  def track(session_id, worker, owner) do
    scope = Objects.scope(session_id, owner)

    if :ets.insert_new(@table, {{scope, worker.pool, worker.uid, worker.slot}}),
      do: GenServer.cast(__MODULE__, {:track, session_id, owner})

    :ok
  rescue
    # Not running (the application is stopping): the ttl still applies.
    ArgumentError -> :ok
  end

  @doc false
  @spec session_ended(String.t()) :: :ok
  def session_ended(session_id),
    do: GenServer.cast(__MODULE__, {:release, Objects.scope(session_id, self())})

  @impl true
  def init(nil) do
    :ets.new(@table, [:ordered_set, :public, :named_table, write_concurrency: true])
    {:ok, %{monitored: %{}}}
  end

  @impl true
  def handle_cast({:track, "", pid}, state) do
    if Map.has_key?(state.monitored, pid) do
      {:noreply, state}
    else
      Process.monitor(pid)
      {:noreply, put_in(state.monitored[pid], true)}
    end
  end

  def handle_cast({:track, _session_id, _pid}, state), do: {:noreply, state}

  def handle_cast({:release, scope}, state) do
    release(scope)
    {:noreply, state}
  end

  @impl true
  def handle_info({:DOWN, _monitor, :process, pid, _reason}, state) do
    release(Objects.scope("", pid))
    {:noreply, %{state | monitored: Map.delete(state.monitored, pid)}}
  end

  def handle_info(_other, state), do: {:noreply, state}

  # The key's first element is bound, so the ordered table visits only the
  # scope's records.
  defp release(scope) do
    records = :ets.select(@table, [{{{scope, :_, :_, :_}}, [], [:"$_"]}])
    Enum.each(records, fn {key} -> :ets.delete(@table, key) end)

    if records != [] do
      Task.start(fn ->
        for {{_scope, pool, uid, slot}} <- records,
            do: Objects.release_scope(pool, {uid, slot}, scope)
      end)
    end

    :ok
  end
end
