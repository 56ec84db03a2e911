defmodule Snakepit.ConversionTest do
  # How terms cross to Python and back: exactly, or refused with a path.
  # Every test runs against a real worker.
  use ExUnit.Case, async: true

  import Bitwise

  alias Snakepit.Error
  alias Snakepit.Test.{Pools, Terms}

  @max_depth 128

  setup_all do
    pool = :"conversion_pool_#{System.unique_integer([:positive])}"

    {:ok, pid} =
      Snakepit.Pool.start_link(
        name: pool,
        size: 1,
        adapter: "conversion_adapter.ConversionAdapter",
        python_path: [Pools.adapters_dir()]
      )

    on_exit(fn -> Process.exit(pid, :shutdown) end)
    %{pool: pool}
  end

  defp nested_map(depth), do: Enum.reduce(1..depth//1, 0, fn _, acc -> %{"a" => acc} end)

  defp nested_list(depth, leaf \\ 0),
    do: Enum.reduce(1..depth//1, leaf, fn _, acc -> [acc] end)

  defp assert_refused(result, reason, path_prefix) do
    assert {:error, %Error{category: :validation, details: details} = error} = result
    assert details.reason == reason, inspect(error)
    assert String.starts_with?(Map.get(details, :path, ""), path_prefix), inspect(details)
    error
  end

  describe "nesting" do
    test "a value nested deeper than the limit is refused on every entry point, and the VM lives" do
      for deep <- [nested_map(400), nested_list(1_000), nested_list(100_000)] do
        assert_refused(Snakepit.execute("echo", %{x: deep}), :too_deep, ~s(args["x"]))

        assert_refused(
          Snakepit.execute_stream("stream_numbers", %{x: deep}, fn _ -> :ok end),
          :too_deep,
          ~s(args["x"])
        )

        assert_refused(
          Snakepit.execute_duplex("echo_inputs", %{x: deep}, [1], fn _ -> :ok end),
          :too_deep,
          ~s(args["x"])
        )

        assert {:error, %Error{category: :validation, details: %{reason: :too_deep}}} =
                 Snakepit.execute_duplex("echo_inputs", %{}, [1, deep], fn _ -> :ok end)

        session = "deep_#{System.unique_integer([:positive])}"
        {:ok, _} = Snakepit.Session.create(session)

        assert {:error, %Error{category: :validation} = error} =
                 Snakepit.Session.register_variable(session, "v", :json, deep)

        assert error.message =~ "nested deeper than #{@max_depth}"
        {:ok, _} = Snakepit.Session.register_variable(session, "v", :json, 1)

        assert {:error, %Error{category: :validation}} =
                 Snakepit.Session.set_variable(session, "v", deep)

        Snakepit.Session.delete(session)
      end
    end

    test "the limit is the same both ways: #{@max_depth} levels cross, one more is refused",
         %{pool: pool} do
      # The arguments map is the first level.
      inner = nested_list(@max_depth - 1)
      assert {:ok, %{"x" => ^inner}} = Snakepit.execute("echo", %{x: inner})
      assert_refused(Snakepit.execute("echo", %{x: [inner]}), :too_deep, ~s(args["x"]))

      # Python's value wraps 1.
      at_limit = nested_list(@max_depth, 1)

      assert {:ok, ^at_limit} = Snakepit.execute("nested", %{depth: @max_depth}, pool: pool)

      error =
        assert_refused(
          Snakepit.execute("nested", %{depth: @max_depth + 1}, pool: pool),
          :too_deep,
          "result[0][0]"
        )

      assert error.message =~ "nested deeper than #{@max_depth}"

      assert {:ok, %{"a" => _}} =
               Snakepit.execute("nested", %{depth: @max_depth, kind: "dict"}, pool: pool)

      # Deeper than Python's recursion limit: Python's encoder gives up, the
      # worker finds the path.
      assert {:error, %Error{category: :validation, details: %{reason: :too_deep}} = error} =
               Snakepit.execute("nested", %{depth: 5_000, kind: "dict"}, pool: pool)

      assert error.message =~ "cannot receive result" <> String.duplicate(~s(["a"]), @max_depth)
      refute error.message =~ String.duplicate(~s(["a"]), @max_depth + 1)
    end

    test "a chunk nested too deep ends the stream with the path, after the chunks before it",
         %{pool: pool} do
      test_pid = self()

      result =
        Snakepit.execute_stream("nested_chunk", %{depth: 200}, &send(test_pid, {:chunk, &1}),
          pool: pool
        )

      assert_refused(result, :too_deep, ~s(chunk["deep"]["a"]))
      assert_received {:chunk, %{"ok" => 1}}
    end
  end

  describe "numbers" do
    test "the double that came back 1 ULP off is exact" do
      assert {:ok, 0.09158478740507359} =
               Snakepit.execute("add", %{a: 0.09158478740507359, b: 0.0})
    end

    test "100 000 random doubles cross bit for bit, both ways", %{pool: pool} do
      doubles = Terms.extremes() ++ for(_ <- 1..100_000, do: Terms.double())
      bits = Enum.map(doubles, &bits/1)

      # Elixir -> Python: what Python received, bit for bit.
      assert {:ok, ^bits} = Snakepit.execute("float_bits", %{values: doubles}, pool: pool)

      # Elixir -> Python -> Elixir.
      assert {:ok, %{"x" => echoed}} = Snakepit.execute("echo", %{x: doubles}, pool: pool)
      assert Enum.map(echoed, &bits/1) == bits

      # Python -> Elixir: doubles made in Python from random bit patterns.
      assert {:ok, %{"values" => values, "bits" => python_bits}} =
               Snakepit.execute("random_doubles", %{count: 100_000, seed: 7}, pool: pool)

      assert length(values) == 100_000
      assert Enum.map(values, &bits/1) == python_bits
      assert Enum.all?(values, &is_float/1)
    end

    test "integers of any size cross exactly, both ways", %{pool: pool} do
      exponents = [31, 32, 63, 64, 65, 100, 128, 1_100, 14_000]

      assert {:ok, pairs} = Snakepit.execute("integers", %{exponents: exponents}, pool: pool)
      assert length(pairs) == 4 * length(exponents)

      for [n, text] <- pairs do
        assert is_integer(n)
        assert Integer.to_string(n) == text
      end

      values = Enum.map(pairs, &hd/1)
      texts = Enum.map(values, &Integer.to_string/1)
      assert {:ok, ^texts} = Snakepit.execute("integer_texts", %{values: values}, pool: pool)
      assert {:ok, %{"x" => ^values}} = Snakepit.execute("echo", %{x: values}, pool: pool)
    end

    test "session variables hold numbers exactly, written from either side", %{pool: pool} do
      session = "numbers_#{System.unique_integer([:positive])}"
      {:ok, _} = Snakepit.Session.create(session)

      value = %{
        "f" => 0.09158478740507359,
        "n" => Integer.pow(2, 100),
        "m" => -Integer.pow(10, 40)
      }

      {:ok, _} = Snakepit.Session.register_variable(session, "v", :json, value)

      assert {:ok, ^value} =
               Snakepit.execute("read_variable", %{name: "v"}, pool: pool, session_id: session)

      assert {:ok, nil} =
               Snakepit.execute("write_variable", %{name: "v", exponent: 200, double: 5.0e-324},
                 pool: pool,
                 session_id: session
               )

      expected = %{"n" => Integer.pow(2, 200), "f" => 5.0e-324}
      assert {:ok, %{value: ^expected}} = Snakepit.Session.get_variable(session, "v")
      Snakepit.Session.delete(session)
    end

    test "integers longer than 4300 digits are refused with the path", %{pool: pool} do
      longest = Integer.pow(10, 4300) - 1
      assert {:ok, %{"x" => ^longest}} = Snakepit.execute("echo", %{x: longest}, pool: pool)

      error =
        assert_refused(
          Snakepit.execute("echo", %{x: [1, -Integer.pow(10, 4300)]}, pool: pool),
          :number_out_of_range,
          ~s(args["x"][1])
        )

      assert error.message =~ "4301 digits"

      # Python refuses to write them: a SerializationError from the worker.
      assert {:error, %Error{category: :python, python_type: "SerializationError"}} =
               Snakepit.execute("power_of_two", %{exponent: 15_000}, pool: pool)
    end
  end

  describe "keys" do
    test "terms whose keys would merge are refused with the path" do
      cases = [
        {%{x: %{:a => 1, "a" => 2}}, ~s(args["x"])},
        {%{x: %{1 => :x, "1" => :y}}, ~s(args["x"])},
        {[a: 1, a: 2], "args"},
        {%{x: [{:ok, 1}, {:ok, 2}]}, ~s(args["x"])},
        {%{x: [1, %{y: [b: 1, b: 2]}]}, ~s(args["x"][1]["y"])}
      ]

      for {args, path} <- cases do
        error = assert_refused(Snakepit.execute("echo", args), :duplicate_key, path)
        assert error.details.path == path
      end
    end

    test "binary parameters named twice are refused" do
      assert {:error, %Error{category: :validation, details: %{reason: :duplicate_key}}} =
               Snakepit.execute("echo", %{}, binary_parameters: %{:a => <<1>>, "a" => <<2>>})
    end

    test "a Python dict whose keys collide as JSON keys is refused", %{pool: pool} do
      error =
        assert_refused(
          Snakepit.execute("colliding_keys", %{}, pool: pool),
          :duplicate_key,
          "result"
        )

      assert error.message =~ ~s("1")
    end

    test "keyword lists, tuples and atoms keep their documented forms" do
      assert {:ok, %{"x" => %{"a" => 1, "b" => ["c", 2.5]}}} =
               Snakepit.execute("echo", %{x: [a: 1, b: {:c, 2.5}]})
    end
  end

  describe "bad input never raises" do
    test "improper lists are refused with the path" do
      for bad <- [[1 | 2], [{:a, 1} | :b], [1, 2 | %{}]] do
        error = assert_refused(Snakepit.execute("echo", %{x: [0, bad]}), :invalid_argument, "")
        assert error.details.path == ~s(args["x"][1])
        assert error.message =~ "improper list"
      end
    end

    test "timeouts beyond the documented bound are refused, not raised" do
      for timeout <- [1 <<< 32, 1 <<< 63, 1 <<< 64, 1 <<< 70, 0, -1, 1.5] do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.execute("ping", %{}, timeout: timeout)

        assert {:error, %Error{category: :validation}} =
                 Snakepit.execute_stream("stream_numbers", %{}, fn _ -> :ok end,
                   idle_timeout: timeout
                 )

        # 0 is a valid checkout timeout: do not wait.
        if timeout != 0 do
          assert {:error, %Error{category: :validation}} =
                   Snakepit.execute("ping", %{}, checkout_timeout: timeout)
        end
      end

      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{}, timeout: 4_000_000_000)
    end

    test "a session's ttl beyond the store's bound is refused" do
      for ttl <- [1 <<< 32, 1 <<< 70, 0, -5] do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.Session.create("ttl_#{System.unique_integer([:positive])}", ttl: ttl)
      end
    end

    test "an option given twice says so" do
      assert {:error, %Error{message: message}} =
               Snakepit.execute("ping", %{}, timeout: 1_000, timeout: 2_000)

      assert message =~ "given twice"
    end

    test "a pool option given twice says so" do
      assert {:error, %Error{message: message}} =
               Snakepit.Pool.Config.new(name: :twice, size: 1, size: 2)

      assert message =~ "given twice: [:size]"
    end
  end

  describe "sizes" do
    test "arguments beyond :max_message_bytes are refused before anything is sent" do
      pool = Pools.start!("conversion_adapter.ConversionAdapter", max_message_bytes: 1_000_000)

      big = String.duplicate("x", 1_000_001)

      error =
        assert_refused(Snakepit.execute("echo", %{x: big}, pool: pool), :message_too_large, "")

      assert error.message =~ ":max_message_bytes"

      assert {:error, %Error{category: :validation, details: %{reason: :message_too_large}}} =
               Snakepit.execute("echo", %{},
                 pool: pool,
                 binary_parameters: %{"blob" => :binary.copy(<<0>>, 1_000_001)}
               )

      assert {:error, %Error{category: :validation, details: %{reason: :message_too_large}}} =
               Snakepit.execute_stream("nested_chunk", %{x: big}, fn _ -> :ok end, pool: pool)

      inputs = [:binary.copy(<<1>>, 10), :binary.copy(<<1>>, 1_000_001)]

      assert {:error, %Error{category: :validation, details: %{reason: :message_too_large}}} =
               Snakepit.execute_duplex("input_sizes", %{}, inputs, fn _ -> :ok end, pool: pool)

      # Just under the limit still goes.
      assert {:ok, %{"x" => _}} =
               Snakepit.execute("echo", %{x: String.duplicate("x", 900_000)}, pool: pool)
    end
  end

  describe "random terms" do
    test "500 random terms round-trip through a real worker as documented", %{pool: pool} do
      seed = Terms.seed(System.unique_integer([:positive]))

      for i <- 1..500 do
        term = Terms.term(5)
        expected = Terms.expected(term)

        assert {:ok, %{"x" => got}} = Snakepit.execute("echo", %{x: term}, pool: pool),
               "term #{i} of seed #{inspect(seed)}: #{inspect(term, limit: :infinity)}"

        assert got === expected,
               "term #{i} of seed #{inspect(seed)}: #{inspect(term, limit: :infinity)}"
      end
    end
  end

  defp bits(float) do
    <<bits::64>> = <<float::float-64>>
    bits
  end
end
