defmodule Snakepit.Pool.Checkout do
  @moduledoc """
  How a call gets a worker: in the caller's process, without a message to the
  pool while a suitable worker has a free slot.

  A worker serves up to `:concurrency` requests at once; a slot is taken with
  an atomic compare-and-swap in the NIF (a *lease*) and given back when the
  call ends, or by the lease's destructor if the caller dies. Only when every
  suitable worker is full does the caller join the pool's bounded queue, and
  the pool hands it a lease as soon as a slot frees.

  ## Sessions and affinity

  A session is bound to the worker that serves its first request; the binding
  is written with `:ets.insert_new/2`, so concurrent first requests of one
  session agree on one worker. Later requests prefer that worker:

  | mode | preferred worker free | preferred worker busy | preferred worker gone or restarted |
  |---|---|---|---|
  | `:hint` (default) | use it | any free worker, else queue | any free worker, else queue (and rebind) |
  | `:strict_queue` | use it | wait for that worker (checkout timeout applies) | `:session_worker_unavailable` |
  | `:strict_fail_fast` | use it | `:worker_busy` at once | `:session_worker_unavailable` |

  A restarted or recycled worker is a new process that lost the Python state,
  so strict modes never route a session to it.
  """

  alias Snakepit.{Error, Native, Pool, Telemetry, Worker}

  @type lease :: reference()

  @doc """
  Runs `fun.(worker, remaining_timeout)` holding a slot of a worker of pool
  `pool_name`, then gives the slot back. `opts` has `:session_id` (`""` for
  none), `:affinity` (`nil` for the pool's default) and `:checkout_timeout`
  (`nil` for the pool's default), and may have `:worker`: `{uid, slot}` of
  the one worker to use (waiting for a slot of it; a worker that is gone
  gives `:session_worker_unavailable`); `deadline` is a monotonic time in
  ms (or `:infinity`) for the whole call, queue included.
  """
  @spec with_worker(atom(), map(), integer() | :infinity, (Worker.t(), timeout() -> result)) ::
          result | {:error, Error.t()}
        when result: term()
  def with_worker(pool_name, opts, deadline, fun) do
    with {:ok, info} <- Pool.lookup(pool_name) do
      Pool.count(info, :request)

      result =
        with {:ok, worker, lease} <- take(info, opts, deadline) do
          try do
            case remaining(deadline) do
              {:ok, remaining} -> fun.(worker, remaining)
              :expired -> {:error, timeout_error(:call, worker)}
            end
          after
            Native.lease_release(lease)
          end
        end

      if match?({:error, _}, result), do: Pool.count(info, :error)
      result
    end
  end

  @doc """
  Takes a slot of a worker of pool `pool_name` as `with_worker/4` does and
  returns it with its lease, for a call that runs elsewhere (the bridge's
  calls from outside the pools): the slot goes back when the lease is
  released, or when its last reference is gone.
  """
  @spec lend(atom(), map(), integer() | :infinity) ::
          {:ok, Worker.t(), lease()} | {:error, Error.t()}
  def lend(pool_name, opts, deadline) do
    with {:ok, info} <- Pool.lookup(pool_name) do
      Pool.count(info, :request)
      result = take(info, opts, deadline)
      if match?({:error, _}, result), do: Pool.count(info, :error)
      result
    end
  end

  defp take(info, opts, deadline) do
    affinity = opts.affinity || info.affinity
    queue_deadline = queue_deadline(deadline, opts.checkout_timeout || info.checkout_timeout)
    checkout(info, opts, affinity, queue_deadline)
  end

  @doc "The error of a session whose worker is gone."
  @spec session_worker_unavailable() :: Error.t()
  def session_worker_unavailable do
    Error.new(
      :pool,
      "the session's worker is gone (stopped, restarted or recycled) and its state with it",
      %{reason: :session_worker_unavailable}
    )
  end

  # -- choosing a worker --

  defp checkout(info, %{worker: {uid, slot}}, _affinity, deadline),
    do: pinned(info, uid, slot, deadline)

  defp checkout(info, %{session_id: session_id}, affinity, deadline),
    do: session_checkout(info, session_id, affinity, deadline)

  defp session_checkout(info, "", _affinity, deadline), do: any(info, deadline)

  defp session_checkout(info, session_id, affinity, deadline) do
    case bound_worker(info, session_id) do
      :unbound -> bind(info, session_id, affinity, deadline)
      {:ok, worker} -> preferred(info, worker, affinity, deadline)
      {:gone, uid} -> rebind(info, session_id, uid, affinity, deadline)
    end
  end

  defp bound_worker(info, session_id) do
    case :ets.lookup(info.sessions, session_id) do
      [] ->
        :unbound

      [{_, uid, slot}] ->
        case :ets.lookup(info.workers, slot) do
          [{_, %Worker{uid: ^uid} = worker}] -> {:ok, worker}
          _ -> {:gone, uid}
        end
    end
  rescue
    # The pool stopped under us: its tables are gone.
    ArgumentError -> :unbound
  end

  # First request of a session: whichever worker serves it holds the session,
  # unless a concurrent first request bound it first; then follow that one.
  defp bind(info, session_id, affinity, deadline) do
    with {:ok, worker, lease} <- any(info, deadline) do
      if :ets.insert_new(info.sessions, {session_id, worker.uid, worker.slot}) do
        {:ok, worker, lease}
      else
        Native.lease_release(lease)
        session_checkout(info, session_id, affinity, deadline)
      end
    end
  end

  defp preferred(info, worker, affinity, deadline) do
    case {Native.lease_acquire(worker.resource), affinity} do
      {{:ok, lease}, _} -> {:ok, worker, lease}
      {_, :hint} -> any(info, deadline)
      {:draining, _strict} -> {:error, session_worker_unavailable()}
      {:busy, :strict_queue} -> enqueue(info, worker.uid, deadline)
      {:busy, :strict_fail_fast} -> {:error, worker_busy(worker)}
    end
  end

  defp rebind(info, session_id, old_uid, :hint, deadline) do
    with {:ok, worker, lease} <- any(info, deadline) do
      replace = [{{session_id, old_uid, :_}, [], [{{session_id, worker.uid, worker.slot}}]}]

      case :ets.select_replace(info.sessions, replace) do
        1 ->
          {:ok, worker, lease}

        0 ->
          # Someone rebound the session meanwhile: follow the new binding.
          Native.lease_release(lease)
          session_checkout(info, session_id, :hint, deadline)
      end
    end
  end

  defp rebind(_info, _session_id, _old_uid, _strict, _deadline),
    do: {:error, session_worker_unavailable()}

  # One worker and no other: the one holding a call's Python objects.
  defp pinned(info, uid, slot, deadline) do
    with [{_, %Worker{uid: ^uid} = worker}] <- lookup_slot(info, slot) do
      case Native.lease_acquire(worker.resource) do
        {:ok, lease} -> {:ok, worker, lease}
        :busy -> enqueue(info, uid, deadline)
        :draining -> {:error, session_worker_unavailable()}
      end
    else
      _ -> {:error, session_worker_unavailable()}
    end
  end

  # Round robin over the ready workers; the first with a free slot wins.
  # While callers wait in the queue, a newcomer joins the queue behind them
  # instead of taking a slot the moment it frees: first come, first served,
  # so no waiter starves under saturation.
  defp any(info, deadline) do
    if :atomics.get(info.queued, 1) > 0,
      do: enqueue(info, :any, deadline),
      else: any_free(info, deadline)
  end

  defp any_free(info, deadline) do
    start = :atomics.add_get(info.next, 1, 1)

    found =
      Enum.find_value(0..(info.size - 1), fn offset ->
        with [{_, worker}] <- lookup_slot(info, rem(start + offset, info.size)),
             {:ok, lease} <- Native.lease_acquire(worker.resource) do
          {worker, lease}
        else
          _ -> nil
        end
      end)

    case found do
      {worker, lease} -> {:ok, worker, lease}
      nil -> enqueue(info, :any, deadline)
    end
  end

  defp lookup_slot(info, slot) do
    :ets.lookup(info.workers, slot)
  rescue
    ArgumentError -> []
  end

  # -- waiting in the pool's queue --

  defp enqueue(info, target, deadline) do
    queued = :atomics.add_get(info.queued, 1, 1)

    if queued > info.max_queue do
      :atomics.sub(info.queued, 1, 1)
      Telemetry.execute([:snakepit, :pool, :saturated], %{queued: queued - 1}, %{pool: info.name})
      {:error, saturated(info)}
    else
      waited(info, fn -> wait(info, target, deadline) end)
    end
  end

  # The queue wait, as `[:snakepit, :checkout, :wait]`.
  defp waited(info, fun) do
    start = System.monotonic_time()
    result = fun.()

    {outcome, worker_id} =
      case result do
        {:ok, worker, _lease} -> {:granted, worker.id}
        {:error, %Error{details: details}} -> {Map.get(details, :reason, :error), nil}
      end

    Telemetry.execute(
      [:snakepit, :checkout, :wait],
      %{duration: System.monotonic_time() - start},
      %{pool: info.name, worker_id: worker_id, outcome: outcome}
    )

    result
  end

  defp wait(info, target, deadline) do
    ref = make_ref()
    monitor = Process.monitor(info.pid)
    send(info.pid, {:checkout, self(), ref, target})

    result =
      receive do
        {^ref, {:granted, worker, lease}} -> {:ok, worker, lease}
        {^ref, {:error, error}} -> {:error, error}
        {:DOWN, ^monitor, :process, _, _} -> {:error, pool_gone(info)}
      after
        timeout_until(deadline) -> cancel(info, ref, deadline)
      end

    Process.demonitor(monitor, [:flush])
    result
  end

  # The pool answers the cancel after any grant it sent, so a grant that
  # crossed the cancel is in the mailbox by then and its slot goes back.
  defp cancel(info, ref, deadline) do
    try do
      # No timeout: a pool that is busy stopping still answers, and one that
      # dies answers with its exit.
      GenServer.call(info.pid, {:cancel_checkout, ref}, :infinity)
    catch
      :exit, _ -> :ok
    end

    receive do
      {^ref, {:granted, _worker, lease}} -> Native.lease_release(lease)
      {^ref, {:error, _}} -> :ok
    after
      0 -> :ok
    end

    case deadline do
      {_, :checkout} -> {:error, timeout_error(:checkout, info)}
      {_, :call} -> {:error, timeout_error(:queued_call, info)}
    end
  end

  # -- time --

  # How long a caller may wait in the queue, and which limit that is: the
  # checkout timeout when it comes first, else the call's own deadline.
  defp queue_deadline(deadline, nil), do: {deadline, :call}

  defp queue_deadline(deadline, checkout_timeout) do
    checkout_deadline = System.monotonic_time(:millisecond) + checkout_timeout

    if deadline == :infinity or checkout_deadline < deadline,
      do: {checkout_deadline, :checkout},
      else: {deadline, :call}
  end

  defp timeout_until({:infinity, _}), do: :infinity

  defp timeout_until({deadline, _}),
    do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp remaining(:infinity), do: {:ok, :infinity}

  defp remaining(deadline) do
    case deadline - System.monotonic_time(:millisecond) do
      ms when ms > 0 -> {:ok, ms}
      _ -> :expired
    end
  end

  # -- errors --

  defp saturated(info) do
    Error.new(
      :pool,
      "pool #{inspect(info.name)} is saturated: all workers are busy and #{info.max_queue} callers already wait",
      %{reason: :pool_saturated, pool: info.name}
    )
  end

  defp worker_busy(worker) do
    Error.new(:pool, "the session's worker #{worker.id} is busy", %{
      reason: :worker_busy,
      worker_id: worker.id
    })
  end

  defp pool_gone(info) do
    Error.new(:pool, "pool #{inspect(info.name)} stopped while the call waited for a worker", %{
      reason: :unknown_pool,
      pool: info.name
    })
  end

  defp timeout_error(:checkout, info) do
    Error.new(:timeout, "no worker of pool #{inspect(info.name)} became free in time", %{
      reason: :checkout_timeout,
      pool: info.name
    })
  end

  defp timeout_error(:queued_call, info) do
    Error.new(
      :timeout,
      "the call's time ran out while it waited for a worker of #{inspect(info.name)}",
      %{
        reason: :timeout,
        pool: info.name
      }
    )
  end

  defp timeout_error(:call, worker) do
    Error.new(:timeout, "the call's time ran out while it waited for a worker", %{
      reason: :timeout,
      worker_id: worker.id
    })
  end
end
