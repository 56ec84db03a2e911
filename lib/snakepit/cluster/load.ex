defmodule Snakepit.Cluster.Load do
  @moduledoc false
  # Publishes the free capacity of this node's pools (not `local_only`) to
  # the other nodes, and keeps theirs: a table read without a round trip.
  #
  # Every @interval ms it measures its pools (the workers' own counters,
  # read from the NIF) and sends the figures to the load processes of the
  # other nodes (members of the `:loads` group) when they changed, and at
  # least every @refresh ms. A node that goes down, or a pool that is gone
  # from a node's figures, is dropped from the table.

  use GenServer

  alias Snakepit.{Cluster, Pool}

  @table __MODULE__
  @interval 100
  @refresh 1_000

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # What `node` last published for pool `name`.
  @spec of(atom(), node()) :: %{free: non_neg_integer(), workers: non_neg_integer()}
  def of(name, node) do
    case :ets.lookup(@table, {name, node}) do
      [{_, free, workers}] -> %{free: free, workers: workers}
      [] -> %{free: 0, workers: 0}
    end
  rescue
    ArgumentError -> %{free: 0, workers: 0}
  end

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :protected, read_concurrency: true])
    :ok = :pg.join(Cluster.scope(), :loads, self())
    :ok = :net_kernel.monitor_nodes(true)
    send(self(), :measure)
    {:ok, %{published: %{}, last_sent: 0}}
  end

  @impl true
  def handle_info(:measure, state) do
    loads = measure()
    store(node(), loads)
    now = System.monotonic_time(:millisecond)

    state =
      if loads != state.published or now - state.last_sent >= @refresh do
        for pid <- :pg.get_members(Cluster.scope(), :loads), node(pid) != node() do
          send(pid, {:snakepit_load, node(), loads})
        end

        %{state | published: loads, last_sent: now}
      else
        state
      end

    Process.send_after(self(), :measure, @interval)
    {:noreply, state}
  end

  def handle_info({:snakepit_load, from, loads}, state) do
    store(from, loads)
    {:noreply, state}
  end

  def handle_info({:nodedown, gone}, state) do
    :ets.match_delete(@table, {{:_, gone}, :_, :_})
    {:noreply, state}
  end

  def handle_info({:nodeup, _node}, state), do: {:noreply, %{state | last_sent: 0}}
  def handle_info(_other, state), do: {:noreply, state}

  # `%{pool => {free, workers}}` of this node's shared pools.
  defp measure do
    for info <- Pool.running(), not info.local_only, into: %{} do
      {info.name, {Pool.free_slots(info), length(Pool.ready_workers(info))}}
    end
  end

  # New figures first, then the pools gone from them: a reader never sees
  # a pool of `from` missing in between.
  defp store(from, loads) do
    :ets.insert(@table, for({name, {free, workers}} <- loads, do: {{name, from}, free, workers}))

    for [name] <- :ets.match(@table, {{:"$1", from}, :_, :_}), not Map.has_key?(loads, name) do
      :ets.delete(@table, {name, from})
    end
  end
end
