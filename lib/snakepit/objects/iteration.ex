defmodule Snakepit.Objects.Iteration do
  @moduledoc false
  # Enumerating a `Snakepit.Ref` (a fresh Python iterator on its object each
  # time) or a `Snakepit.StreamRef` (the Python iterator itself, continued).
  #
  # Items come in batches: each fetch (`snakepit.next`) says how many items of
  # the previous batch were consumed (`skip`) and asks for up to `max` more;
  # the worker keeps what it sent until a later fetch confirms it, so items
  # fetched ahead and not consumed are sent again to the next enumeration.
  # When an enumeration stops early, its end confirms what it consumed; one
  # that consumed everything confirms the last batch, which frees the
  # exhausted iterator in Python. Batches grow from @first_batch to the ref's
  # `prefetch`.

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
      # A ref's enumeration makes its own iterator, known after the first fetch.
      iterator: if(match?(%StreamRef{}, ref), do: ref.ref_id),
      items: [],
      batch_len: 0,
      taken: 0,
      done: false,
      size: min(@first_batch, ref.prefetch),
      deadline: deadline(ref.stream_timeout)
    }
  end

  defp next(%{items: [item | rest]} = state),
    do: {[item], %{state | items: rest, taken: state.taken + 1}}

  defp next(%{done: true} = state), do: {:halt, state}
  defp next(state), do: state |> fetch(state.batch_len, state.size) |> next()

  defp finish(%{iterator: nil}), do: :ok
  # Nothing was fetched, so there is nothing to confirm.
  defp finish(%{batch_len: 0, done: false, ref: %StreamRef{}}), do: :ok

  # A ref's own iterator that did not reach its end is of no further use.
  defp finish(%{ref: %Ref{}, done: false} = state) do
    _ = Objects.release_ids(state.ref, [state.iterator])
    :ok
  end

  defp finish(state) do
    _ = Objects.fetch(state.ref, request(state, state.taken, 0), @end_timeout)
    :ok
  end

  defp fetch(state, skip, max) do
    {timeout, which} = fetch_timeout(state)

    case Objects.fetch(state.ref, request(state, skip, max), timeout) do
      {:ok, %{"items" => items, "done" => done} = answer, worker} ->
        items =
          if answer["tagged"] == 0,
            do: items,
            else: Objects.decode(items, worker, state.ref.session_id || "", options(state.ref))

        %{
          state
          | items: items,
            batch_len: Kernel.length(items),
            taken: 0,
            done: done,
            iterator: answer["iterator"] || state.iterator,
            size: min(state.size * 2, state.ref.prefetch)
        }

      {:error, %Error{category: :timeout} = error} ->
        raise %Error{
          error
          | message: "#{error.message} (the stream's #{which})",
            details: Map.put(error.details, :timeout, which)
        }

      {:error, error} ->
        raise error
    end
  end

  defp request(state, skip, max) do
    base = %{
      "skip" => skip,
      "max" => max,
      "linger_us" => linger(state.ref.item_timeout),
      "max_bytes" => @max_bytes
    }

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

  # A fetch stops pulling more items after this long, so that a slow
  # iterator's items come one by one within the item timeout.
  defp linger(:infinity), do: @linger_us
  defp linger(item_timeout), do: min(@linger_us, item_timeout * 100)

  defp options(ref),
    do: %{
      prefetch: ref.prefetch,
      item_timeout: ref.item_timeout,
      stream_timeout: ref.stream_timeout
    }

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: now() + timeout

  defp now, do: System.monotonic_time(:millisecond)
end
