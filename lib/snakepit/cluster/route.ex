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
  # its caller (`Snakepit.Cluster.Callers`): the caller's exit, or the loss
  # of the connection between the nodes, stops the remote call the way a
  # local caller's exit stops a local one (the Python tool is cancelled).

  alias Snakepit.{Call, Cluster, Error, Pool, Telemetry}
  alias Snakepit.Call.Feeder
  alias Snakepit.Cluster.{Callers, Relay, Sessions}

  # Time the remote side gets beyond the call's own timeout to answer with
  # its own error (a `:timeout`) before the caller gives up on it.
  @answer_margin 5_000
  # For calls that do not run a tool (the session store's).
  @call_timeout 30_000

  @doc false
  # Where a call with validated options `opts` runs: a call without a
  # session where its pool has room (`target/2`); a call in a session on
  # the node that owns the session (`Snakepit.Cluster.Sessions`), which
  # creates or renews it in its store. `:node` decides for either.
  @spec place(map()) :: :local | {:remote, node()} | {:error, Error.t()}
  def place(%{session_id: "", pool: pool, node: node}), do: target(pool, node)

  def place(%{session_id: id, pool: pool, node: nil, affinity: affinity}) do
    case Sessions.owner(id, pool, affinity) do
      :local -> ensure_here(id)
      other -> other
    end
  end

  def place(%{session_id: id, node: node}) when node == node(), do: ensure_here(id)
  def place(%{node: node}), do: {:remote, node}

  defp ensure_here(id) do
    with :ok <- Snakepit.Session.ensure(id), do: :local
  end

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
  # Runs `module.fun(args...)` on `node` for a call of at most `timeout`
  # ms, in a process there that dies with the calling process.
  @spec run(node(), module(), atom(), list(), timeout()) :: term()
  def run(node, module, fun, args, timeout) do
    erpc_timeout = if timeout == :infinity, do: :infinity, else: timeout + @answer_margin
    call_at(node, __MODULE__, :serve, [self(), module, fun, args], erpc_timeout)
  end

  @doc false
  # `module.fun(args...)` on `node`; its failures to answer (the node or
  # the connection went down, the call raised or timed out there) as errors.
  @spec call_at(node(), module(), atom(), list(), timeout()) :: term()
  def call_at(node, module, fun, args, timeout \\ @call_timeout) do
    :erpc.call(node, module, fun, args, timeout)
  catch
    :error, {:erpc, :noconnection} -> {:error, lost(node, :noconnection)}
    :error, {:erpc, :timeout} -> {:error, no_answer(node, timeout)}
    # The remote side raised, threw or exited: a bug there, not the tool's
    # failure (that is an {:error, %Snakepit.Error{}} answer).
    :error, {:erpc, reason} -> {:error, lost(node, reason)}
    :error, {:exception, reason, _stack} -> {:error, lost(node, reason)}
    :throw, value -> {:error, lost(node, {:throw, value})}
    :exit, {:exception, reason} -> {:error, lost(node, reason)}
    :exit, reason -> {:error, lost(node, reason)}
  end

  @doc false
  # On the call's node: runs `module.fun(args...)` while `caller` lives.
  @spec serve(pid(), module(), atom(), list()) :: term()
  def serve(caller, module, fun, args),
    do: Callers.run(caller, fn -> apply(module, fun, args) end)

  @doc false
  # Runs a stream (`inputs` nil) or duplex call on `node`: the stream runs
  # in a relay process there (`Snakepit.Cluster.Relay`), the callback here,
  # in the calling process, and a duplex call's inputs are read here too.
  @spec stream(node(), String.t(), term(), Enumerable.t() | nil, (map() -> term()), map()) ::
          :ok | {:error, Error.t()}
  def stream(node, command, args, inputs, callback, opts) do
    # Connected first: a spawn on a node that cannot be reached only logs.
    if node in Node.list() or Node.connect(node) == true,
      do: relay_stream(node, command, args, inputs, callback, opts),
      else: {:error, lost(node, :noconnection)}
  end

  defp relay_stream(node, command, args, inputs, callback, opts) do
    kind = if inputs == nil, do: :stream, else: :duplex

    metadata = Call.span_metadata(opts.pool, command, nil, opts.session_id, node)

    Telemetry.span([:snakepit, kind], metadata, fn ->
      tag = make_ref()
      feeder = if inputs != nil, do: Feeder.start(self(), tag, inputs, Call.input_window())
      relay = Node.spawn(node, Relay, :run, [self(), tag, feeder, command, args, opts])
      monitor = Process.monitor(relay)

      try do
        Call.relayed(relay, monitor, tag, callback, opts.timeout)
      after
        send(relay, {tag, :stop})
        Process.demonitor(monitor, [:flush])
        if feeder, do: Feeder.stop(feeder, tag)
        Call.flush(tag)
      end
    end)
  end

  @doc false
  # The error of a call whose process on `node` ended with `reason` before
  # answering: `:noconnection` is the node (or the connection) going down.
  @spec lost(node(), term()) :: Error.t()
  def lost(node, :noconnection) do
    Error.new(
      :transport,
      "node #{inspect(node)} went down (or the connection to it) during the call",
      %{
        reason: :node_down,
        node: node
      }
    )
  end

  def lost(node, reason) do
    Error.new(
      :transport,
      "the call on node #{inspect(node)} failed: #{inspect(reason, limit: 20)}",
      %{
        reason: :remote_failure,
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
end
