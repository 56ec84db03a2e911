defmodule Snakepit.Cluster.Route do
  @moduledoc false
  # Where a call to a pool runs, and running it on another node.
  #
  # The caller's node when its pool has a free slot; otherwise the node
  # whose pool has the most free slots as last published (no round trip to
  # find it); otherwise the caller's node if it has the pool (the call
  # waits in its queue), else any node that has it. A `:node` option pins
  # the call; a `local_only` pool keeps its node's calls.
  #
  # A call on another node runs in a process there (`:erpc`) that dies with
  # its caller: a watcher monitors the caller, so the caller's exit, or the
  # loss of the connection between the nodes, stops the remote call the way
  # a local caller's exit stops a local one (the Python tool is cancelled).

  alias Snakepit.{Cluster, Error, Pool}

  # Time the remote side gets beyond the call's own timeout to answer with
  # its own error (a `:timeout`) before the caller gives up on it.
  @answer_margin 5_000

  @doc false
  # Cheap while the node is alone (no pool lookup); otherwise a look at the
  # local pool's workers, and at the published figures only when they are
  # full.
  @spec target(atom(), node() | nil) :: :local | {:remote, node()}
  def target(_pool, node) when node == node(), do: :local
  def target(_pool, node) when is_atom(node) and node != nil, do: {:remote, node}

  def target(pool, nil) do
    if Node.list() == [] do
      :local
    else
      case Pool.lookup(pool) do
        # Kept to this node, for its own calls too.
        {:ok, %{local_only: true}} -> :local
        {:ok, info} -> if Pool.free_slots(info) > 0, do: :local, else: elsewhere(pool, true)
        {:error, _} -> elsewhere(pool, false)
      end
    end
  end

  # The other node with the most free slots; else this node's queue when it
  # has the pool; else any node that has it.
  defp elsewhere(pool, local?) do
    others = for %{node: node} = member <- Cluster.members(pool), node != node(), do: member

    case Enum.max_by(others, & &1.free, fn -> nil end) do
      %{free: free, node: node} when free > 0 -> {:remote, node}
      _ -> if local?, do: :local, else: any(others)
    end
  end

  defp any([]), do: :local
  defp any([%{node: node} | _]), do: {:remote, node}

  @doc false
  # Runs `Snakepit.fun(args...)` on `node` (its options pin it there), for
  # at most `timeout` ms.
  @spec run(node(), :execute | :describe, list(), timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def run(node, fun, args, timeout) do
    erpc_timeout = if timeout == :infinity, do: :infinity, else: timeout + @answer_margin

    try do
      :erpc.call(node, __MODULE__, :serve, [self(), fun, args], erpc_timeout)
    catch
      :error, {:erpc, :noconnection} -> {:error, node_down(node)}
      :error, {:erpc, :timeout} -> {:error, no_answer(node, timeout)}
      # The remote side raised, threw or exited: a bug there, not the tool's
      # failure (that is an {:error, %Snakepit.Error{}} answer).
      :error, {:erpc, reason} -> {:error, node_error(node, reason)}
      :error, {:exception, reason, _stack} -> {:error, node_error(node, reason)}
      :throw, value -> {:error, node_error(node, {:throw, value})}
      :exit, {:exception, reason} -> {:error, node_error(node, reason)}
      :exit, reason -> {:error, node_error(node, reason)}
    end
  end

  @doc false
  # On the call's node: runs `Snakepit.fun(args...)` while `caller` lives.
  @spec serve(pid(), atom(), list()) :: term()
  def serve(caller, fun, args) do
    server = self()

    watcher =
      spawn_link(fn ->
        ref = Process.monitor(caller)

        receive do
          {:DOWN, ^ref, :process, _, _} -> Process.exit(server, :kill)
        end
      end)

    result = apply(Snakepit, fun, args)
    Process.unlink(watcher)
    Process.exit(watcher, :kill)
    result
  end

  defp node_down(node) do
    Error.new(
      :transport,
      "node #{inspect(node)} went down (or the connection to it) during the call",
      %{
        reason: :node_down,
        node: node
      }
    )
  end

  defp no_answer(node, timeout) do
    Error.new(:timeout, "node #{inspect(node)} did not answer within #{timeout} ms", %{
      reason: :timeout,
      node: node
    })
  end

  defp node_error(node, reason) do
    Error.new(
      :transport,
      "the call on node #{inspect(node)} failed: #{inspect(reason, limit: 20)}",
      %{
        reason: :remote_failure,
        node: node
      }
    )
  end
end
