defmodule Snakepit.NativeTest do
  # Every NIF entry point, called with hostile terms: it answers or raises
  # ArgumentError, and never panics (nor takes the VM down).
  use ExUnit.Case, async: true

  import Bitwise

  alias Snakepit.Native
  alias Snakepit.Pool.Checkout
  alias Snakepit.Test.Pools

  # Entry points that change node-wide state even with well-formed
  # arguments (the bridge, the Elixir tools list) are left out.
  @skipped [
    :load_nif,
    :loaded?,
    :bridge_start,
    :bridge_adopt,
    :bridge_stop,
    :bridge_set_tools,
    :module_info
  ]

  defp hostile do
    deep = Enum.reduce(1..100_000, 0, fn _, acc -> [acc] end)
    deep_map = Enum.reduce(1..10_000, 0, fn _, acc -> %{"a" => acc} end)

    [
      nil,
      true,
      :atom,
      -1,
      0,
      1 <<< 32,
      1 <<< 64,
      -(1 <<< 70),
      1.5,
      -0.0,
      "",
      "hostile_#{System.unique_integer([:positive])}",
      <<255, 0>>,
      :binary.copy(<<0>>, 100_000),
      [],
      [1 | 2],
      [{:a, 1} | :b],
      [a: 1, a: 2],
      {},
      {1, 2, 3},
      %{},
      %{a: [1 | 2]},
      %{:a => 1, "a" => 2},
      %URI{},
      self(),
      make_ref(),
      fn -> :ok end,
      deep,
      deep_map,
      [deep, deep_map]
    ]
  end

  # A worker of a pool of its own (the calls may stop it), a call on it, and
  # the application's bridge, so that entry points get past their first
  # argument.
  defp resources do
    pool = Pools.start!("conversion_adapter.ConversionAdapter")
    opts = %{session_id: "", affinity: nil, checkout_timeout: nil}

    Checkout.with_worker(pool, opts, :infinity, fn worker, _ ->
      {:ok, call} =
        Native.call_unary(worker.resource, self(), make_ref(), "echo", %{}, %{}, "", 0)

      [worker.resource, call, Snakepit.Bridge.store!()]
    end)
  end

  test "every entry point answers hostile arguments with a term or an ArgumentError" do
    values = hostile() ++ resources()
    :rand.seed(:exsss, {1, 2, 3})

    entry_points =
      for {name, arity} <- Native.__info__(:functions), name not in @skipped, do: {name, arity}

    assert length(entry_points) > 25

    for {name, arity} <- entry_points, _ <- 1..500 do
      args = for _ <- 1..arity//1, do: Enum.random(values)

      try do
        apply(Native, name, args)
      rescue
        ArgumentError -> :ok
      catch
        kind, reason ->
          flunk("#{name}/#{arity} #{kind}: #{inspect(reason, limit: 5)}")
      end
    end
  end
end
