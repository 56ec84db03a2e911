defmodule Mix.Tasks.Snakepit.Gen.Adapter do
  @shortdoc "Writes a new Python adapter with its tests"

  @moduledoc """
  Writes a commented Python adapter and a pytest file for it, and prints the
  pool configuration that serves it.

      mix snakepit.gen.adapter my_app.nlp.NlpAdapter

  The argument is the adapter as a pool names it: the Python module
  (`my_app.nlp`) and the class (`NlpAdapter`). This writes

    * `priv/python/my_app/nlp.py`: the class, with a plain tool
      (`count_words`), a streaming tool (`stream_words`) and a tool that
      keeps a session variable (`add_to_total`), and `__init__.py` files for
      the packages on the way;
    * `priv/python/tests/test_my_app_nlp.py`: tests of the tools, run
      without a node.

  Options:

    * `--path DIR` — where the Python code goes (default `priv/python`);
    * `--force` — overwrite files that exist (otherwise the task refuses).
  """

  use Mix.Task

  @switches [path: :string, force: :boolean]
  @identifier ~r/^[A-Za-z_][A-Za-z0-9_]*$/

  @impl true
  def run(args) do
    case OptionParser.parse(args, strict: @switches) do
      {opts, [adapter], []} ->
        generate(adapter, opts)

      _ ->
        Mix.raise("usage: mix snakepit.gen.adapter my_app.nlp.NlpAdapter [--path DIR] [--force]")
    end
  end

  defp generate(adapter, opts) do
    # Mix keeps EEx on the code path only when asked, from Elixir 1.15.
    if function_exported?(Mix, :ensure_application!, 1),
      do: apply(Mix, :ensure_application!, [:eex])

    {module_parts, class} = parse!(adapter)
    root = Keyword.get(opts, :path, "priv/python")
    module_file = Path.join([root | module_parts]) <> ".py"
    test_file = Path.join([root, "tests", "test_#{Enum.join(module_parts, "_")}.py"])

    assigns = [
      class: class,
      adapter: adapter,
      module: Enum.join(module_parts, "."),
      pool: pool_name(class),
      root: root,
      test_path: test_file,
      snakepit_python: Path.join(:code.priv_dir(:snakepit), "python")
    ]

    files =
      [
        {module_file, render("adapter.py.eex", assigns)},
        {test_file, render("adapter_test.py.eex", assigns)}
      ] ++ package_inits(root, module_parts)

    existing = for {path, _} <- files, File.exists?(path), not init?(path), do: path

    if existing != [] and not Keyword.get(opts, :force, false) do
      Mix.raise("#{Enum.join(existing, ", ")} exists; pass --force to overwrite")
    end

    for {path, content} <- files, not (init?(path) and File.exists?(path)) do
      File.mkdir_p!(Path.dirname(path))
      File.write!(path, content)
      Mix.shell().info("* creating #{path}")
    end

    Mix.shell().info("""

    Serve it from a pool, in config/config.exs:

        config :snakepit, pools: [[name: #{inspect(assigns[:pool])}, adapter: "#{adapter}", python_path: ["#{root}"]]]

    (a relative :python_path is read from the current directory; in a
    release, give Application.app_dir(:your_app, "#{root}") in config/runtime.exs)

    Test it:

        PYTHONPATH=#{assigns[:snakepit_python]} python3 -m pytest #{test_file}
    """)
  end

  defp parse!(adapter) do
    parts = String.split(adapter, ".")

    if length(parts) < 2 or not Enum.all?(parts, &Regex.match?(@identifier, &1)) do
      Mix.raise(
        "the adapter must be a Python module and a class, as in my_app.nlp.NlpAdapter; got: #{inspect(adapter)}"
      )
    end

    {Enum.drop(parts, -1), List.last(parts)}
  end

  # `NlpAdapter` is served by pool `:nlp`.
  defp pool_name(class) do
    case class |> String.replace_suffix("Adapter", "") |> Macro.underscore() do
      "" -> :adapter
      name -> String.to_atom(name)
    end
  end

  # Empty `__init__.py` files for each package of the module, kept if present.
  defp package_inits(root, module_parts) do
    for depth <- 1..(length(module_parts) - 1)//1 do
      {Path.join([root | Enum.take(module_parts, depth)] ++ ["__init__.py"]), ""}
    end
  end

  defp init?(path), do: Path.basename(path) == "__init__.py"

  defp render(template, assigns) do
    :snakepit
    |> :code.priv_dir()
    |> Path.join("templates/#{template}")
    |> EEx.eval_file(assigns: assigns)
  end
end
