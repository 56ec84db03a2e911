defmodule Snakepit.Cluster.Sessions do
  @moduledoc false
  # Which node owns a session: the one whose store holds it. Its calls run
  # there, on the worker that holds its Python state, and `Snakepit.Session`
  # acts on that store, from whichever node they come.
  #
  # Finding the owner, from the cheapest answer to the dearest:
  #
  #   * this node is alone, or its store holds the session: here;
  #   * the owner this node found before (a table; no round trip);
  #   * the other Snakepit nodes are asked (one round trip, once per session
  #     and node), and the one that holds it is remembered;
  #   * nobody holds it: a new session. A pool call creates it on the node
  #     chosen by rendezvous hashing of the session id over the nodes that
  #     serve the pool (so two nodes starting the same session at once agree
  #     on one), `Snakepit.Session` functions on the calling node.
  #
  # When a remembered owner goes down, the session is remembered as lost: a
  # `:hint` call starts it afresh (fresh Python state) on a live node, chosen
  # as for a new one; strict calls answer `:session_worker_unavailable` until
  # the session is deleted (`Snakepit.Session.delete/1` forgets it here).

  use GenServer

  alias Snakepit.{Cluster, Error, Native, Pool}
  alias Snakepit.Pool.Checkout

  @table __MODULE__
  # Owners remembered at most; past it, the live ones are forgotten (asked
  # again when used).
  @max_remembered 100_000
  @ask_timeout 5_000

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # The owner of session `id` for a call to `pool` with `affinity` (`nil`
  # for the pool's own).
  @spec owner(String.t(), atom(), atom() | nil) ::
          :local | {:remote, node()} | {:error, Error.t()}
  def owner(id, pool, affinity) do
    case remembered(id) do
      {:ok, node} ->
        {:remote, node}

      {:lost, node} ->
        cond do
          held?(id) -> :local
          hint?(pool, affinity) -> find(id, pool)
          true -> {:error, lost(id, node)}
        end

      :none ->
        if alone_or_held?(id), do: :local, else: find(id, pool)
    end
  end

  @doc false
  # The owner of session `id` for `Snakepit.Session`'s functions: a session
  # nobody holds (or whose owner is lost) is this node's.
  @spec owner(String.t()) :: :local | {:remote, node()}
  def owner(id) do
    case remembered(id) do
      {:ok, node} -> {:remote, node}
      _none_or_lost -> if alone_or_held?(id), do: :local, else: ask(id, fn -> :local end)
    end
  end

  @doc false
  # This node no longer cares where session `id` is (it deleted it).
  @spec forget(String.t()) :: :ok
  def forget(id) do
    :ets.delete(@table, id)
    :ok
  rescue
    ArgumentError -> :ok
  end

  @doc false
  # Whether this node's store holds session `id` (asked by the other nodes).
  @spec held?(String.t()) :: boolean()
  def held?(id) do
    match?({:ok, _}, Native.session_touch(Snakepit.Bridge.store!(), id))
  end

  defp alone_or_held?(id), do: Node.list() == [] or held?(id)

  defp remembered(id) do
    case :ets.lookup(@table, id) do
      [{_, {:lost, node}}] -> {:lost, node}
      [{_, node}] -> if node in Node.list(), do: {:ok, node}, else: {:lost, node}
      [] -> :none
    end
  end

  defp find(id, pool), do: ask(id, fn -> remember(id, rendezvous(id, pool)) end)

  # Asks the other Snakepit nodes whether they hold the session; `none`
  # decides when none does.
  defp ask(id, none) do
    others =
      for pid <- :pg.get_members(Cluster.scope(), :loads), node(pid) != node(), do: node(pid)

    answers = :erpc.multicall(others, __MODULE__, :held?, [id], @ask_timeout)

    case for({node, {:ok, true}} <- Enum.zip(others, answers), do: node) do
      [node | _] -> remember(id, {:remote, node})
      [] -> none.()
    end
  end

  defp remember(id, {:remote, node} = owner) do
    if :ets.info(@table, :size) >= @max_remembered do
      :ets.select_delete(@table, [{{:_, :"$1"}, [{:is_atom, :"$1"}], [true]}])
    end

    :ets.insert(@table, {id, node})
    owner
  end

  defp remember(id, :local) do
    :ets.delete(@table, id)
    :local
  end

  # The node, among those serving `pool`, whose hash with the session id is
  # highest: every node computes the same one from the same members.
  defp rendezvous(id, pool) do
    here = if match?({:ok, _}, Pool.lookup(pool)), do: [node()], else: []

    candidates = Enum.uniq(here ++ for(%{node: node} <- Cluster.members(pool), do: node))

    case Enum.max_by(candidates, &:erlang.phash2({id, &1}), fn -> node() end) do
      node when node == node() -> :local
      node -> {:remote, node}
    end
  end

  defp hint?(pool, nil) do
    case Pool.lookup(pool) do
      {:ok, %{affinity: affinity}} -> affinity == :hint
      # No such pool here: the default mode.
      _ -> true
    end
  end

  defp hint?(_pool, affinity), do: affinity == :hint

  defp lost(id, node) do
    error = Checkout.session_worker_unavailable()

    %{
      error
      | message: "session #{inspect(id)} was owned by node #{inspect(node)}, which went down",
        details: Map.merge(error.details, %{node: node})
    }
  end

  @impl true
  def init(nil) do
    :ets.new(@table, [:named_table, :public, read_concurrency: true, write_concurrency: true])
    :ok = :net_kernel.monitor_nodes(true)
    {:ok, nil}
  end

  @impl true
  # Sessions owned by a node that went down are lost.
  def handle_info({:nodedown, gone}, state) do
    for [id] <- :ets.match(@table, {:"$1", gone}), do: :ets.insert(@table, {id, {:lost, gone}})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
