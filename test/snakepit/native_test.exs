defmodule Snakepit.NativeTest do
  # Every NIF entry point, called with hostile terms: it answers or raises
  # ArgumentError, and never panics (nor takes the VM down).
  use ExUnit.Case, async: true

  alias Snakepit.Native
  alias Snakepit.Pool.Checkout
  alias Snakepit.Test.{Pools, Terms}

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

  # A worker of a pool of its own (the calls may stop it), a call on it, and
  # the application's bridge, so that entry points get past their first
  # argument.
  defp resources do
    pool = Pools.start!("conversion_adapter.ConversionAdapter")
    opts = %{session_id: "", affinity: nil, checkout_timeout: nil}

    Checkout.with_worker(pool, opts, :infinity, fn worker, _ ->
      {:ok, call} =
        Native.call_unary(%{
          worker: worker.resource,
          owner: self(),
          tag: make_ref(),
          tool: "echo",
          args: %{},
          binaries: %{},
          session_id: "",
          metadata: %{},
          timeout_ms: 0
        })

      [worker.resource, call, Snakepit.Bridge.store!()]
    end)
  end

  test "every entry point answers hostile arguments with a term or an ArgumentError" do
    values = Terms.hostile() ++ resources()
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
