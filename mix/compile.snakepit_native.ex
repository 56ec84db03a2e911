defmodule Mix.Tasks.Compile.SnakepitNative do
  @moduledoc """
  Builds the Rust workspace and puts its two libraries where they are loaded:

    * the NIF at `priv/native/libsnakepit_nif.so`;
    * the Python extension at `priv/python/snakepit_bridge/_native.abi3.so`,
      next to the pure-Python package, so a plain `python3` runs workers.

  Runs `cargo build --release --locked`; cargo decides what is stale. Set
  `SNAKEPIT_CARGO` to use another cargo binary.
  """
  use Mix.Task.Compiler

  @products [
    {"libsnakepit_nif.so", "priv/native/libsnakepit_nif.so"},
    {"libsnakepit_native.so", "priv/python/snakepit_bridge/_native.abi3.so"}
  ]

  @impl Mix.Task.Compiler
  def run(_args) do
    root = Path.expand("..", __DIR__)
    target = System.get_env("CARGO_TARGET_DIR") || Path.join(root, "target")
    cargo = cargo!()

    args = ~w(build --release --locked --quiet -p snakepit_nif -p snakepit_py)

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true, into: IO.stream(:stdio, :line)) do
      {_, 0} ->
        Enum.each(@products, fn {built, dest} ->
          install(Path.join([target, "release", built]), Path.join(root, dest))
        end)

        {:ok, []}

      {_, status} ->
        Mix.shell().error("cargo build failed with exit status #{status}")
        {:error, []}
    end
  end

  defp cargo! do
    candidates = [
      System.get_env("SNAKEPIT_CARGO"),
      System.find_executable("cargo"),
      Path.expand("~/.cargo/bin/cargo")
    ]

    Enum.find(candidates, &(&1 && File.exists?(&1))) ||
      Mix.raise("cargo not found: install Rust (https://rustup.rs) or set SNAKEPIT_CARGO")
  end

  # Copies only when the content changed, through a rename, so a library that a
  # running VM or Python process has mapped is never rewritten in place.
  defp install(source, dest) do
    unless File.exists?(dest) and File.read!(dest) == File.read!(source) do
      File.mkdir_p!(Path.dirname(dest))
      tmp = dest <> ".tmp"
      File.cp!(source, tmp)
      File.rename!(tmp, dest)
    end
  end
end
