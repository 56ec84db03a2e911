defmodule Snakepit.Python do
  @moduledoc """
  Where the bundled Python package lives and how a worker command is built.

  The package `snakepit_bridge` (with its native extension built by
  `mix compile`) is in `priv/python`; workers run it with a plain `python3`,
  no pip install needed.
  """

  @doc "The directory holding the `snakepit_bridge` package."
  @spec package_dir() :: String.t()
  def package_dir, do: Path.join(:code.priv_dir(:snakepit), "python")

  @doc "The default adapter, `snakepit_bridge.adapters.showcase.ShowcaseAdapter`."
  @spec default_adapter() :: String.t()
  def default_adapter, do: "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  @doc """
  The environment of a worker: `PYTHONPATH` with the user's paths first, then
  the bundled package, then any inherited `PYTHONPATH`.
  """
  @spec worker_env([String.t()], [{String.t(), String.t()}]) :: [{String.t(), String.t()}]
  def worker_env(python_path, env) do
    inherited = System.get_env("PYTHONPATH")
    paths = Enum.map(python_path, &Path.expand/1) ++ [package_dir()] ++ List.wrap(inherited)

    [
      {"PYTHONPATH", Enum.join(paths, ":")},
      {"PYTHONUNBUFFERED", "1"},
      {"SNAKEPIT_BEAM_PID", System.pid()}
    ] ++ env
  end

  @doc """
  Arguments that start `worker_module` serving `adapter` over `transport`
  (`--transport unix` is only passed for `:unix`, so worker programs that
  know only TCP keep working).
  """
  @spec worker_args(String.t(), String.t(), String.t(), :tcp | :unix) :: [String.t()]
  def worker_args(worker_module, adapter, worker_id, transport \\ :tcp) do
    base = ["-m", worker_module, "--adapter", adapter, "--worker-id", worker_id]
    if transport == :unix, do: base ++ ["--transport", "unix"], else: base
  end
end
