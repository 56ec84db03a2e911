defmodule Snakepit.Objects.Iteration do
  @moduledoc false
  # Enumerating a `Snakepit.Ref` (a fresh Python iterator on its object each
  # time) or a `Snakepit.StreamRef` (the Python iterator itself, continued).
  #
  # Items come in batches: each fetch (`snakepit.next`) confirms the position
  # (counted from the iterator's first item) up to which items were consumed,
  # and asks for up to `max` more; the worker keeps what it sent until a
  # later fetch confirms it, so items fetched ahead and not consumed are sent
  # again to the next enumeration. Positions are absolute, so a confirmation
  # that arrives twice (a fetch that failed after the worker acted on it,
  # then the enumeration's end) changes nothing. When an enumeration ends,
  # it confirms what it consumed; one that consumed everything frees the
  # exhausted iterator in Python. A ref's enumeration releases the iterator
  # it made. Batches grow from @first_batch to the ref's `prefetch`.

  alias Snakepit.{Error, Objects, Ref, StreamRef}

  @first_batch 16
  # How long a fetch keeps pulling items once it has one, at most.
  @linger_us 20_000
  # The JSON one fetch answers with, about.
  @max_bytes 1_048_576
  # What an enumeration's end (confirming, releasing) may take.
  @end_timeout 5_000

  @doc false
  @spec stream(Ref.t() | StreamRef.t()) :: Enumerable.t()
  def stream(ref), do: Stream.resource(fn -> start(ref) end, &next/1, &finish/1)

  defp start(ref) do
    %{
      ref: ref,
      # A ref's enumeration reads an iterator of its own (or the object
      # itself, when it iterates itself), known after the first fetch.
      iterator: if(match?(%StreamRef{}, ref), do: ref.ref_id),
      items: [],
      # Position of the batch's first item, and how many of it were taken.
      first: nil,
      taken: 0,
      done: false,
      size: min(@first_batch, ref.prefetch),
      deadline: deadline(ref.stream_timeout)
    }
  end

  defp next(%{items: [item | rest]} = state),
    do: {[item], %{state | items: rest, taken: state.taken + 1}}

  defp next(%{done: true} = state), do: {:halt, state}
  defp next(state), do: state |> fetch(consumed(state), state.size) |> next()

  defp finish(%{iterator: nil}), do: :ok

  # An iterator the enumeration made for itself is of no further use.
  defp finish(%{ref: %Ref{id: id}, iterator: iterator} = state) when iterator != id do
    _ = Objects.release_ids(state.ref, [iterator])
    :ok
  end

  # Nothing was fetched, so there is nothing to confirm.
  defp finish(%{first: nil}), do: :ok

  defp finish(state) do
    _ = Objects.fetch(state.ref, request(state, consumed(state), 0), @end_timeout)
    :ok
  end

  # The position up to which items were consumed (`nil` before the first
  # fetch: the worker then sends from where the last enumeration stopped).
  defp consumed(%{first: nil}), do: nil
  defp consumed(state), do: state.first + state.taken

  defp fetch(state, position, max) do
    {timeout, which} = fetch_timeout(state)

    case Objects.fetch(state.ref, request(state, position, max), timeout) do
      {:ok, %{"items" => items, "done" => done, "position" => first} = answer, worker} ->
        items =
          if answer["tagged"] == 0,
            do: items,
            else: Objects.decode(items, worker, options(state.ref))

        %{
          state
          | items: items,
            first: first,
            taken: 0,
            done: done,
            iterator: answer["iterator"] || state.iterator,
            size: min(state.size * 2, state.ref.prefetch)
        }

      {:error, %Error{category: :timeout} = error} ->
        # The worker stopped the iterator if the fetch reached it; if time
        # ran out before (waiting for the worker), it is stopped here.
        if state.iterator, do: Objects.release_ids(state.ref, [state.iterator])

        raise %Error{
          error
          | message: "#{error.message} (the stream's #{which})",
            details: Map.put(error.details, :timeout, which)
        }

      {:error, error} ->
        raise error
    end
  end

  defp request(state, position, max) do
    base = %{
      "max" => max,
      "linger_us" => linger(state.ref.item_timeout),
      "max_bytes" => @max_bytes
    }

    base = if position, do: Map.put(base, "position", position), else: base

    case state do
      %{iterator: nil, ref: %Ref{id: id}} -> Map.merge(base, %{"ref" => id, "fresh" => true})
      %{iterator: id} -> Map.put(base, "ref", id)
    end
  end

  # The fetch waits for at most `item_timeout` (the gap before the next
  # item) and for no longer than the enumeration has left.
  defp fetch_timeout(%{ref: ref, deadline: deadline}) do
    left = if deadline == :infinity, do: :infinity, else: max(deadline - now(), 1)

    cond do
      left == :infinity -> {ref.item_timeout, :item_timeout}
      ref.item_timeout == :infinity or left < ref.item_timeout -> {left, :stream_timeout}
      true -> {ref.item_timeout, :item_timeout}
    end
  end

  # A fetch stops pulling more items this long after its first one, so
  # that a consumer sees the items of a slow iterator as they come (the
  # worker also sends what it has when the next item could miss the
  # fetch's deadline).
  defp linger(:infinity), do: @linger_us
  defp linger(item_timeout), do: min(@linger_us, item_timeout * 100)

  defp options(ref),
    do: %{
      node: ref.node,
      prefetch: ref.prefetch,
      item_timeout: ref.item_timeout,
      stream_timeout: ref.stream_timeout
    }

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: now() + timeout

  defp now, do: System.monotonic_time(:millisecond)
end
