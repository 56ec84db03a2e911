defmodule Snakepit.Pool.WaitersTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.Waiters

  defp add(waiters, target) do
    ref = make_ref()
    {Waiters.add(waiters, ref, self(), make_ref(), target), ref}
  end

  test "a worker serves its own and the :any waiters in arrival order" do
    w = Waiters.new()
    {w, a1} = add(w, :any)
    {w, u1} = add(w, :u)
    {w, v1} = add(w, :v)
    {w, a2} = add(w, :any)
    {w, u2} = add(w, :u)
    assert Waiters.size(w) == 5

    {first, w} = Waiters.next_for(w, :u)
    {second, w} = Waiters.next_for(w, :u)
    {third, w} = Waiters.next_for(w, :u)
    {fourth, w} = Waiters.next_for(w, :u)
    assert Enum.map([first, second, third, fourth], & &1.ref) == [a1, u1, a2, u2]
    assert {nil, w} = Waiters.next_for(w, :u)
    # v's waiter is still there, for v only.
    assert {%{ref: ^v1, target: :v}, w} = Waiters.next_for(w, :v)
    assert Waiters.size(w) == 0
  end

  test "waiters that leave are skipped, by ref or by monitor" do
    w = Waiters.new()
    {w, a1} = add(w, :any)
    {w, a2} = add(w, :any)
    {w, a3} = add(w, :any)
    {%{ref: ^a1}, w} = Waiters.remove(w, a1)
    assert {nil, ^w} = Waiters.remove(w, a1)
    monitor = w.by_ref[a2].monitor
    {%{ref: ^a2}, w} = Waiters.remove_monitored(w, monitor)
    assert {nil, _} = Waiters.remove_monitored(w, monitor)
    assert Waiters.size(w) == 1
    assert {%{ref: ^a3}, w} = Waiters.next_for(w, :x)
    assert {nil, _} = Waiters.next_for(w, :x)
  end

  test "taking every waiter of a worker that is gone" do
    w = Waiters.new()
    {w, u1} = add(w, :u)
    {w, a1} = add(w, :any)
    {w, u2} = add(w, :u)
    {w, u3} = add(w, :u)
    {_, w} = Waiters.remove(w, u2)
    {taken, w} = Waiters.take_all_for(w, :u)
    assert Enum.map(taken, & &1.ref) == [u1, u3]
    assert Waiters.size(w) == 1
    assert {%{ref: ^a1}, _} = Waiters.next_for(w, :u)
  end

  test "stale entries are compacted away: memory follows the callers that wait" do
    w =
      Enum.reduce(1..10_000, Waiters.new(), fn _, w ->
        {w, ref} = add(w, :any)
        {_, w} = Waiters.remove(w, ref)
        w
      end)

    assert Waiters.size(w) == 0
    assert :queue.len(w.any) <= 64
  end

  # The model: a list of waiters in arrival order.
  test "random operations agree with a list kept in arrival order" do
    for seed <- 1..30 do
      :rand.seed(:exsss, {seed, seed, seed})

      {_w, _model} =
        Enum.reduce(1..400, {Waiters.new(), []}, fn _, {w, model} ->
          case :rand.uniform(5) do
            n when n <= 2 ->
              target = Enum.random([:any, :u, :v])
              {w, ref} = add(w, target)
              {w, model ++ [{ref, target}]}

            3 when model != [] ->
              {ref, _} = Enum.random(model)
              {%{ref: ^ref}, w} = Waiters.remove(w, ref)
              {w, List.keydelete(model, ref, 0)}

            4 ->
              uid = Enum.random([:u, :v])
              {waiter, w} = Waiters.next_for(w, uid)
              expected = Enum.find(model, fn {_, t} -> t in [:any, uid] end)

              case expected do
                nil ->
                  assert waiter == nil

                {ref, _} ->
                  assert waiter.ref == ref
              end

              {w, if(expected, do: List.delete(model, expected), else: model)}

            _ ->
              uid = Enum.random([:u, :v])
              {taken, w} = Waiters.take_all_for(w, uid)
              expected = for {ref, ^uid} <- model, do: ref
              assert Enum.map(taken, & &1.ref) == expected
              {w, Enum.reject(model, fn {_, t} -> t == uid end)}
          end
          |> tap(fn {w, model} -> assert Waiters.size(w) == length(model) end)
        end)
    end
  end
end
