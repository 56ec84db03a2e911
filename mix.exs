# The native compiler lives outside lib/: it is a build tool, not part of the app.
Code.require_file("mix/compile.snakepit_native.ex", __DIR__)

defmodule Snakepit.MixProject do
  use Mix.Project

  def project do
    [
      app: :snakepit,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:snakepit_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      # EEx renders the templates of `mix snakepit.gen.adapter`; Mix has it.
      xref: [exclude: [EEx]],
      docs: [main: "Snakepit"]
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {Snakepit.Application, []},
      env: [pools: [[name: :default]]]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
