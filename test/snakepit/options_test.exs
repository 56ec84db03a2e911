defmodule Snakepit.OptionsTest do
  # The schemas behind the pool, call, stream and bridge options: defaults,
  # errors that name the option, and the docs tables they generate.
  use ExUnit.Case, async: true

  import Bitwise

  alias Snakepit.{Error, Limits}
  alias Snakepit.Bridge.Config, as: BridgeConfig
  alias Snakepit.Pool.Config

  doctest Snakepit.Bridge.Config

  defp refused({:error, %Error{category: :validation, details: details, message: message}}),
    do: {details[:option], message}

  defp moduledoc(module) do
    {:docs_v1, _, :elixir, _, %{"en" => doc}, _, _} = Code.fetch_docs(module)
    doc
  end

  describe "pool options" do
    test "unset options take their defaults" do
      assert {:ok, config} = Config.new(name: :defaults)
      assert config.size == System.schedulers_online()
      assert config.adapter == Snakepit.Python.default_adapter()
      assert config.max_message_bytes == Limits.max_message_bytes()
      assert {config.start_timeout, config.affinity, config.env} == {30_000, :hint, []}
      assert {config.checkout_timeout, config.max_requests, config.cwd} == {nil, nil, nil}
    end

    test "hostile values are refused, not raised" do
      for {key, value} <- [
            python: <<255>>,
            python: "py\0thon",
            python_path: ["a" | "b"],
            env: %URI{},
            env: [{"A", "1"} | :b],
            concurrency: 1 <<< 40,
            max_message_bytes: 1 <<< 64
          ] do
        assert {^key, _message} = refused(Config.new([{:name, :p}, {key, value}]))
      end
    end

    test "each error names its option" do
      assert refused(Config.new(size: 1)) == {:name, "pool :name is required"}

      assert refused(Config.new(name: :p, size: 0)) ==
               {:size, "pool :size must be a positive integer of at most 10000, got: 0"}

      assert {:colour, "unknown pool options [:colour]; known: [:name" <> _} =
               refused(Config.new(name: :p, colour: :blue))

      assert refused(Config.new(name: :p, size: 1, size: 2)) ==
               {:size, "pool options given twice: [:size]"}

      assert refused(Config.new(name: :p, affinity: :sometimes)) ==
               {:affinity,
                "pool :affinity must be one of [:hint, :strict_queue, :strict_fail_fast], got: :sometimes"}

      assert {:python, "pool :python must name an executable; " <> _} =
               refused(Config.new(name: :p, python: "no-such-python-here"))

      assert refused(Config.new(:nope)) ==
               {nil, "pool options must be a keyword list, got: :nope"}
    end

    test "nil is accepted only where the default is unset" do
      assert {:ok, %Config{max_requests: nil}} = Config.new(name: :p, max_requests: nil)
      assert {:size, _} = refused(Config.new(name: :p, size: nil))
      assert {:affinity, _} = refused(Config.new(name: :p, affinity: nil))
    end

    test "the moduledoc's table lists every option with its default" do
      doc = moduledoc(Config)

      for key <- Map.keys(%Config{name: :x}) -- [:__struct__],
          do: assert(doc =~ "| `#{inspect(key)}` |", "#{key} is not documented")

      assert doc =~ "| `:max_queue` | `1_000` |"
      assert doc =~ "| `:max_message_bytes` | `268_435_456` (256 MiB) |"
      assert doc =~ "| `:name` | required |"
    end
  end

  describe "call and stream options" do
    test "errors name the option and keep the bounds" do
      assert {:timeout,
              ":timeout must be :infinity or a positive integer of at most 4000000000 ms" <> _} =
               refused(Snakepit.execute("ping", %{}, timeout: 4_000_000_001))

      assert {:checkout_timeout, _} = refused(Snakepit.execute("ping", %{}, checkout_timeout: -1))
      assert {:idle_timeout, _} = refused(Snakepit.execute("ping", %{}, idle_timeout: 0))
      assert {:raw_binaries, _} = refused(Snakepit.execute("ping", %{}, raw_binaries: :yes))
      assert {:pool, _} = refused(Snakepit.execute("ping", %{}, pool: "default"))
      assert {:session_id, _} = refused(Snakepit.execute("ping", %{}, session_id: <<255>>))
      assert {:bogus, "unknown options [:bogus]" <> _} = refused(Snakepit.describe(bogus: 1))

      assert {:timeout, "options given twice: [:timeout]"} =
               refused(Snakepit.execute("ping", %{}, timeout: 1, timeout: 2))
    end

    test "the moduledoc's tables list the options of calls and streams" do
      doc = moduledoc(Snakepit)

      for key <-
            [:pool, :timeout, :session_id, :affinity, :checkout_timeout, :binary_parameters] ++
              [:idle_timeout, :raw_binaries],
          do: assert(doc =~ "| `#{inspect(key)}` |", "#{key} is not documented")

      assert doc =~ "| `:idle_timeout` | `:infinity` |"
    end
  end

  describe "bridge options" do
    test "defaults, and errors that name the option" do
      assert {:ok, %BridgeConfig{address: "127.0.0.1:0", watch_buffer: 1_024}} =
               BridgeConfig.new([])

      assert {:address,
              ~s(bridge :address must be "ip:port" such as "127.0.0.1:0" or "[::1]:0", got: 5)} =
               refused(BridgeConfig.new(address: 5))

      assert {:max_sessions, _} = refused(BridgeConfig.new(max_sessions: -1))
      assert {:colour, _} = refused(BridgeConfig.new(colour: 1))
    end
  end
end
