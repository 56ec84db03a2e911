defmodule Snakepit.Cluster do
  @moduledoc """
  The pools of every connected node: which nodes serve which pools, and how
  many requests each could take now.

  Nothing to configure beyond connecting the nodes (Erlang distribution:
  `Node.connect/1`, libcluster, ...). Every pool that is not `local_only`
  joins a `:pg` group named after it, in a `:pg` scope of Snakepit's own, so
  pools appear and disappear with their nodes. Each node publishes the free
  capacity of its pools to the others, a few times a second and when it
  changes, so that reading it costs no round trip.

  Every call uses it to choose where it runs (see the `:node` option of
  `Snakepit.execute/3`): the caller's node while its pool has a free slot,
  otherwise the node whose pool has the most. Calls in a session run on the
  node that owns the session. The README's "Several nodes" says what runs
  where and what happens when a node goes down.
  """

  alias Snakepit.Cluster.Load

  @scope __MODULE__

  @typedoc "One node serving a pool: its free request slots and its ready workers."
  @type member :: %{node: node(), free: non_neg_integer(), workers: non_neg_integer()}

  @doc false
  # The `:pg` scope, started by the application.
  @spec scope() :: atom()
  def scope, do: @scope

  @doc false
  # A pool's process joins its group (it leaves when it exits).
  @spec join_pool(atom(), pid()) :: :ok
  def join_pool(name, pid), do: :pg.join(@scope, {:pool, name}, pid)

  @doc """
  Every pool served by this node or a connected one, with the nodes that
  serve it, sorted by node; a node's `:free` and `:workers` are as it last
  published them (0 until it has).

      Snakepit.Cluster.pools()
      #=> %{default: [%{node: :"a@host1", free: 16, workers: 2}, %{node: :"b@host2", free: 8, workers: 1}],
      #     gpu: [%{node: :"a@host1", free: 8, workers: 1}]}
  """
  @spec pools() :: %{optional(atom()) => [member()]}
  def pools do
    for {:pool, name} <- :pg.which_groups(@scope), into: %{}, do: {name, members(name)}
  end

  @doc """
  The nodes serving pool `name`, as in `pools/0` (`[]` when none does).
  """
  @spec members(atom()) :: [member()]
  def members(name) do
    @scope
    |> :pg.get_members({:pool, name})
    |> Enum.map(&node/1)
    |> Enum.uniq()
    |> Enum.sort()
    |> Enum.map(fn node -> Map.put(Load.of(name, node), :node, node) end)
  end
end
