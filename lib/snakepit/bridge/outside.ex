defmodule Snakepit.Bridge.Outside do
  @moduledoc false
  # Workers lent to programs outside the pools: the bridge server (in the
  # NIF) runs their `Execute` and `ExecuteStream` calls, and asks here for a
  # worker, through the same checkout as `Snakepit.execute/3` (queue,
  # session affinity, checkout timeout, limits). The answer goes back with
  # `Snakepit.Native.bridge_checkout_reply/2`: the worker and its lease,
  # which the call holds until it ends, or `{:error, reason, message}`.

  alias Snakepit.{Error, Native, Session}
  alias Snakepit.Pool.Checkout

  @affinities %{
    "" => nil,
    "hint" => :hint,
    "strict_queue" => :strict_queue,
    "strict_fail_fast" => :strict_fail_fast
  }

  @doc false
  # Runs in a process of its own; `request` has the string keys of
  # `CheckoutRequest` as atoms: `pool`, `session_id`, `affinity`,
  # `timeout_ms`.
  @spec lend(reference(), map()) :: :ok
  def lend(call, request) do
    # A year-long grpc-timeout is allowed on the wire; waits here stop at
    # the longest timeout the BEAM takes.
    deadline =
      System.monotonic_time(:millisecond) + min(request.timeout_ms, Snakepit.Limits.max_timeout())

    outcome =
      with {:ok, pool} <- pool(request.pool),
           {:ok, affinity} <- affinity(request.affinity),
           :ok <- session(request.session_id) do
        opts = %{session_id: request.session_id, affinity: affinity, checkout_timeout: nil}
        Checkout.lend(pool, opts, deadline)
      end

    case outcome do
      {:ok, worker, lease} ->
        # Nobody waits any more: the slot goes back at once.
        if Native.bridge_checkout_reply(call, {:ok, worker.resource, lease}) == :gone,
          do: Native.lease_release(lease)

      {:error, %Error{message: message, details: details}} ->
        Native.bridge_checkout_reply(
          call,
          {:error, Map.get(details, :reason, :internal), message}
        )
    end

    :ok
  end

  @doc false
  # Answers the bridge's pool listing: the node's pools and their sizes.
  @spec list_pools(reference()) :: :ok
  def list_pools(call) do
    pools = for info <- Snakepit.Pool.running(), do: {Atom.to_string(info.name), info.size}

    Native.bridge_pools_reply(call, Enum.sort(pools))
    :ok
  end

  # Pool names come from outside: only existing atoms are looked up.
  defp pool(name) do
    {:ok, String.to_existing_atom(name)}
  rescue
    ArgumentError ->
      {:error,
       Error.new(:pool, "no pool named #{inspect(name)} runs on this node", %{
         reason: :unknown_pool
       })}
  end

  defp affinity(name) do
    case Map.fetch(@affinities, name) do
      {:ok, affinity} ->
        {:ok, affinity}

      :error ->
        {:error,
         Error.new(:validation, "unknown affinity #{inspect(name)}", %{reason: :invalid_argument})}
    end
  end

  defp session(""), do: :ok
  defp session(id), do: Session.ensure(id)
end
