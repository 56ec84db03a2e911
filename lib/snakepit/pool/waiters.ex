defmodule Snakepit.Pool.Waiters do
  @moduledoc false
  # The callers of one pool waiting for a worker, in arrival order: each
  # waits for any worker, or for one worker (by uid: a session's, a ref's).
  # Every event costs O(1) amortized, however many callers wait:
  #
  #   * a waiter is added at the back of its queue (`:any`, or its worker's);
  #   * the next waiter a worker can serve is the earlier of the heads of
  #     its own queue and of the `:any` queue (arrival numbers tell);
  #   * a waiter that leaves (cancel, exit) is deleted from the index only;
  #     its queue entry is skipped when it comes to the front, and the
  #     queues are compacted when such entries outnumber the waiters, so
  #     their memory stays proportional to the callers that wait.

  defstruct seq: 0, any: :queue.new(), targeted: %{}, by_ref: %{}, by_monitor: %{}, stale: 0

  @type target :: :any | term()
  @type waiter :: %{
          ref: reference(),
          pid: pid(),
          monitor: reference(),
          target: target(),
          seq: non_neg_integer()
        }
  @type t :: %__MODULE__{
          seq: non_neg_integer(),
          any: :queue.queue({non_neg_integer(), reference()}),
          targeted: %{optional(term()) => :queue.queue({non_neg_integer(), reference()})},
          by_ref: %{optional(reference()) => waiter()},
          by_monitor: %{optional(reference()) => reference()},
          stale: non_neg_integer()
        }

  @doc false
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc false
  @spec size(t()) :: non_neg_integer()
  def size(%__MODULE__{by_ref: by_ref}), do: map_size(by_ref)

  @doc false
  # Adds a waiter at the back of its queue.
  @spec add(t(), reference(), pid(), reference(), target()) :: t()
  def add(%__MODULE__{} = waiters, ref, pid, monitor, target) do
    seq = waiters.seq
    waiter = %{ref: ref, pid: pid, monitor: monitor, target: target, seq: seq}
    entry = {seq, ref}

    waiters = %{
      waiters
      | seq: seq + 1,
        by_ref: Map.put(waiters.by_ref, ref, waiter),
        by_monitor: Map.put(waiters.by_monitor, monitor, ref)
    }

    case target do
      :any ->
        %{waiters | any: :queue.in(entry, waiters.any)}

      uid ->
        queue = Map.get(waiters.targeted, uid, :queue.new())
        %{waiters | targeted: Map.put(waiters.targeted, uid, :queue.in(entry, queue))}
    end
  end

  @doc false
  # Takes out the waiter with this ref, if it still waits.
  @spec remove(t(), reference()) :: {waiter() | nil, t()}
  def remove(%__MODULE__{} = waiters, ref) do
    case Map.pop(waiters.by_ref, ref) do
      {nil, _} ->
        {nil, waiters}

      {waiter, by_ref} ->
        waiters = %{
          waiters
          | by_ref: by_ref,
            by_monitor: Map.delete(waiters.by_monitor, waiter.monitor),
            stale: waiters.stale + 1
        }

        {waiter, compact(waiters)}
    end
  end

  @doc false
  # Takes out the waiter watched by this monitor (its caller exited).
  @spec remove_monitored(t(), reference()) :: {waiter() | nil, t()}
  def remove_monitored(%__MODULE__{} = waiters, monitor) do
    case Map.fetch(waiters.by_monitor, monitor) do
      {:ok, ref} -> remove(waiters, ref)
      :error -> {nil, waiters}
    end
  end

  @doc false
  # The waiter that worker `uid` serves next (the earliest of its own and
  # the `:any` waiters), taken out; nil when none waits for it.
  @spec next_for(t(), term()) :: {waiter() | nil, t()}
  def next_for(%__MODULE__{} = waiters, uid) do
    {any_head, waiters} = head(waiters, :any)
    {own_head, waiters} = head(waiters, {:targeted, uid})

    choice =
      case {any_head, own_head} do
        {nil, nil} -> nil
        {{seq_a, _}, {seq_o, _}} when seq_o < seq_a -> {:targeted, uid}
        {nil, _own} -> {:targeted, uid}
        {_any, _} -> :any
      end

    case choice do
      nil ->
        {nil, waiters}

      queue_key ->
        {{_seq, ref}, waiters} = pop(waiters, queue_key)
        {waiter, by_ref} = Map.pop(waiters.by_ref, ref)
        by_monitor = Map.delete(waiters.by_monitor, waiter.monitor)
        {waiter, %{waiters | by_ref: by_ref, by_monitor: by_monitor}}
    end
  end

  @doc false
  # Takes out every waiter for worker `uid` (it is gone), in arrival order.
  @spec take_all_for(t(), term()) :: {[waiter()], t()}
  def take_all_for(%__MODULE__{} = waiters, uid) do
    {queue, targeted} = Map.pop(waiters.targeted, uid, :queue.new())

    {taken, by_ref, by_monitor} =
      queue
      |> :queue.to_list()
      |> Enum.reduce({[], waiters.by_ref, waiters.by_monitor}, fn {_seq, ref}, acc ->
        {taken, by_ref, by_monitor} = acc

        case Map.pop(by_ref, ref) do
          {nil, _} -> acc
          {waiter, by_ref} -> {[waiter | taken], by_ref, Map.delete(by_monitor, waiter.monitor)}
        end
      end)

    stale = waiters.stale - (:queue.len(queue) - length(taken))

    waiters = %{
      waiters
      | targeted: targeted,
        by_ref: by_ref,
        by_monitor: by_monitor,
        stale: stale
    }

    {Enum.reverse(taken), waiters}
  end

  # -- queues with skipped entries --

  # The front entry of a queue that still waits, after dropping the stale
  # ones before it.
  defp head(waiters, key) do
    queue = queue(waiters, key)

    case :queue.peek(queue) do
      :empty ->
        {nil, waiters}

      {:value, {_seq, ref} = entry} ->
        if Map.has_key?(waiters.by_ref, ref) do
          {entry, waiters}
        else
          waiters = put_queue(waiters, key, :queue.drop(queue))
          head(%{waiters | stale: waiters.stale - 1}, key)
        end
    end
  end

  defp pop(waiters, key) do
    {{:value, entry}, queue} = :queue.out(queue(waiters, key))
    {entry, put_queue(waiters, key, queue)}
  end

  defp queue(waiters, :any), do: waiters.any
  defp queue(waiters, {:targeted, uid}), do: Map.get(waiters.targeted, uid, :queue.new())

  defp put_queue(waiters, :any, queue), do: %{waiters | any: queue}

  defp put_queue(waiters, {:targeted, uid}, queue) do
    if :queue.is_empty(queue),
      do: %{waiters | targeted: Map.delete(waiters.targeted, uid)},
      else: %{waiters | targeted: Map.put(waiters.targeted, uid, queue)}
  end

  # Rebuilds the queues without their stale entries once these outnumber
  # the waiters (and are more than a few): linear, but only after as many
  # removals, so O(1) amortized per removal.
  defp compact(%__MODULE__{stale: stale, by_ref: by_ref} = waiters)
       when stale > 32 and stale > map_size(by_ref) do
    live? = fn {_seq, ref} -> Map.has_key?(by_ref, ref) end

    targeted =
      for {uid, queue} <- waiters.targeted,
          kept = :queue.filter(live?, queue),
          not :queue.is_empty(kept),
          into: %{},
          do: {uid, kept}

    %{waiters | any: :queue.filter(live?, waiters.any), targeted: targeted, stale: 0}
  end

  defp compact(waiters), do: waiters
end
