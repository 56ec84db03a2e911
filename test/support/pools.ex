defmodule Snakepit.Test.Pools do
  @moduledoc """
  Starts a pool of a test adapter (from `test/support/python`) under the
  test's supervisor, with a fresh name.
  """

  import ExUnit.Callbacks, only: [start_supervised!: 2]

  @adapters_dir Path.expand("python", __DIR__)

  @doc "The directory of the test adapters, for `:python_path`."
  @spec adapters_dir() :: String.t()
  def adapters_dir, do: @adapters_dir

  @doc """
  Starts a pool running `adapter` (`"module.Class"` in the test adapters)
  with `opts` on top; returns its name.
  """
  @spec start!(String.t(), keyword()) :: atom()
  def start!(adapter, opts \\ []) do
    name = :"test_pool_#{System.unique_integer([:positive])}"
    defaults = [name: name, size: 1, adapter: adapter, python_path: [@adapters_dir]]
    start_supervised!({Snakepit.Pool, Keyword.merge(defaults, opts)}, id: name)
    name
  end
end
