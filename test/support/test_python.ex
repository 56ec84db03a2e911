defmodule Snakepit.Test.TestPython do
  @moduledoc """
  The Python with the tests' extra packages (NumPy, grpcio-tools): the test
  command's venv, which it names in `SNAKEPIT_TEST_PYTHON`. `mix test` alone
  uses `python3` and skips the tests whose packages it lacks.
  """

  @doc "The interpreter's path."
  @spec path() :: String.t()
  def path, do: System.get_env("SNAKEPIT_TEST_PYTHON", "python3")

  @doc """
  Why tests needing `module` must be skipped: nil when the test command named
  its venv (the tests then run, and fail if the module is missing) or when
  the interpreter imports `module`.
  """
  @spec skip_reason(String.t()) :: String.t() | nil
  def skip_reason(module) do
    cond do
      System.get_env("SNAKEPIT_TEST_PYTHON") ->
        nil

      match?({_, 0}, System.cmd(path(), ["-c", "import " <> module], stderr_to_stdout: true)) ->
        nil

      true ->
        "#{module} is not installed for #{path()}"
    end
  end
end
