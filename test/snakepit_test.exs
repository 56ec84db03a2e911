defmodule SnakepitTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Test.Wait

  doctest Snakepit
  doctest Snakepit.Error

  describe "execute/3 round trips" do
    test "ping and add, as in the quick start" do
      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{})
      assert {:ok, 8} = Snakepit.execute("add", %{a: 5, b: 3})
    end

    test "compute, as in the product documents: each operation, and clear refusals" do
      for {operation, expected} <- [
            {"add", 8},
            {"subtract", 2},
            {"multiply", 15},
            {"divide", 5 / 3},
            {"power", 125},
            {"modulo", 2}
          ] do
        assert {:ok, ^expected} = Snakepit.execute("compute", %{operation: operation, a: 5, b: 3})
      end

      assert {:ok, 2.5} = Snakepit.execute("compute", %{operation: "divide", a: 5, b: 2.0})

      for args <- [
            %{operation: "divide", a: 1, b: 0},
            %{operation: "root", a: 1, b: 2},
            %{operation: "add", a: "1", b: 2},
            %{operation: "add", a: true, b: 2},
            %{operation: "power", a: 2, b: 1_000_000_000},
            %{operation: "power", a: 10 ** 4000, b: 10_000}
          ] do
        assert {:error, %Error{category: :python, python_type: "ValueError"}} =
                 Snakepit.execute("compute", args)
      end
    end

    test "JSON types keep their types both ways" do
      args = %{
        int: 42,
        big: 9_007_199_254_740_993,
        negative: -7,
        float: 1.0,
        pi: 3.14159,
        yes: true,
        no: false,
        nothing: nil,
        text: "héllo wörld ✓ 🐍",
        list: [1, 2.5, "three", nil, [true]],
        nested: %{"inner" => %{"deep" => [%{"x" => 1}]}},
        empty_map: %{},
        empty_list: []
      }

      assert {:ok, echoed} = Snakepit.execute("echo", args)

      expected = Map.new(args, fn {k, v} -> {Atom.to_string(k), v} end)
      assert echoed == expected
      assert is_float(echoed["float"]) and is_integer(echoed["int"])
    end

    test "atoms, keyword lists, tuples and integer keys map as documented" do
      args = %{
        atom: :ok,
        keyword: [alpha: 1, beta: "b"],
        tuple: {1, "two", :three},
        int_keys: %{1 => "one"}
      }

      assert {:ok, echoed} = Snakepit.execute("echo", args)
      assert echoed["atom"] == "ok"
      assert echoed["keyword"] == %{"alpha" => 1, "beta" => "b"}
      assert echoed["tuple"] == [1, "two", "three"]
      assert echoed["int_keys"] == %{"1" => "one"}
    end

    test "arguments may be a keyword list" do
      assert {:ok, 3} = Snakepit.execute("add", a: 1, b: 2)
    end

    test "async tools work" do
      assert {:ok, 7} = Snakepit.execute("async_add", %{a: 3, b: 4})
    end

    test "bytes results arrive as binaries and binary parameters as bytes" do
      blob = <<0, 1, 2, 255, 254>>

      assert {:ok, reversed} =
               Snakepit.execute("process_binary", %{operation: "reverse"},
                 binary_parameters: %{"data" => blob}
               )

      assert reversed == <<254, 255, 2, 1, 0>>
    end

    test "the session id reaches the tool's session context" do
      assert {:ok, %{"session_id" => "user_42", "worker_id" => "default-" <> _}} =
               Snakepit.execute("session_info", %{}, session_id: "user_42")

      assert {:ok, %{"session_id" => ""}} = Snakepit.execute("session_info", %{})
    end

    test "a session keeps its state on its worker" do
      session = "counter-#{System.unique_integer([:positive])}"

      assert {:ok, %{"value" => 1}} =
               Snakepit.execute_in_session(session, "set_counter", %{value: 1})

      assert {:ok, %{"value" => 1}} = Snakepit.execute_in_session(session, "get_counter", %{})

      me = self()

      assert :ok =
               Snakepit.execute_in_session_stream(
                 session,
                 "stream_progress",
                 %{steps: 2, delay_ms: 1},
                 &send(me, &1)
               )

      assert_received %{"step" => 2, "is_final" => true}
    end

    test "the call's timeout reaches Python and stops the tool there" do
      marker =
        Path.join(System.tmp_dir!(), "snakepit-timeout-#{System.unique_integer([:positive])}")

      on_exit(fn -> File.rm(marker) end)

      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute("slow_steps", %{steps: 100, step_ms: 50, marker_path: marker},
                 timeout: 300
               )

      # The tool would run 5 s; it was stopped inside the worker instead.
      assert Wait.until(fn -> File.read(marker) == {:ok, "cancelled"} end, 3_000)
    end

    test "many concurrent calls each get their own answer" do
      results =
        1..100
        |> Task.async_stream(fn i -> Snakepit.execute("add", %{a: i, b: 1000}) end,
          max_concurrency: 50
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert results == Enum.map(1..100, &{:ok, &1 + 1000})
    end
  end

  describe "describe/1" do
    test "reports versions and the tools with their parameters" do
      assert {:ok, description} = Snakepit.describe()
      assert description["protocol_version"] == "1"
      assert description["runtime_version"] =~ ~r/^CPython 3\.\d+/

      assert description["adapter"] =~
               ~r/^snakepit_bridge\.adapters\.showcase\..*ShowcaseAdapter$/

      assert description["worker_id"] =~ "default-"

      tools = Map.new(description["tools"], &{&1["name"], &1})
      assert tools["stream_progress"]["supports_streaming"] == true
      assert tools["add"]["supports_streaming"] == false

      assert [%{"name" => "steps", "type" => "int", "required" => false, "default" => 5} | _] =
               tools["stream_progress"]["parameters"]

      assert [%{"name" => "a", "required" => true}, %{"name" => "b"}] = tools["add"]["parameters"]
    end
  end

  describe "errors" do
    test "a Python exception is a :python error with type, message and traceback" do
      assert {:error, %Error{} = error} =
               Snakepit.execute("error_demo", %{error_type: "KeyError", message: "missing thing"})

      assert error.category == :python
      assert error.python_type == "KeyError"
      assert error.message =~ "missing thing"
      assert error.python_traceback =~ "Traceback (most recent call last)"
      assert error.python_traceback =~ "error_demo"
      assert error.details.worker_id =~ "default-"
      assert Exception.message(error) =~ "[python] KeyError"
    end

    test "an unknown tool is a clear :validation error" do
      assert {:error, %Error{category: :validation} = error} =
               Snakepit.execute("no_such_tool", %{})

      assert error.message =~ "unknown tool 'no_such_tool'"
      assert error.message =~ "ping"
      assert error.details.reason == :unknown_tool
    end

    test "bad arguments for a tool are a :validation error" do
      assert {:error, %Error{category: :validation} = error} = Snakepit.execute("add", %{a: 1})
      assert error.message =~ "missing a required argument: 'b'"
      assert error.details.reason == :invalid_arguments
    end

    test "values JSON cannot carry are refused, naming where they are" do
      cases = [
        {%{owner: self()}, ~s(args["owner"]), "pid"},
        {%{items: [1, %{ref: make_ref()}]}, ~s(args["items"][1]["ref"]), "reference"},
        {%{fun: fn -> :ok end}, ~s(args["fun"]), "function"},
        {%{data: <<255, 0>>}, ~s(args["data"]), "UTF-8"},
        {%{when: ~D[2024-01-01]}, ~s(args["when"]), "Date"},
        {%{{:tuple, :key} => 1}, "args", "map keys"}
      ]

      for {args, path, words} <- cases do
        assert {:error, %Error{category: :validation} = error} = Snakepit.execute("echo", args)
        assert error.details.path == path, inspect(error)
        assert error.message =~ words
        assert error.details.reason == :invalid_argument
      end
    end

    test "bad calls are refused before anything is sent" do
      assert {:error, %Error{category: :validation}} = Snakepit.execute("", %{})
      assert {:error, %Error{category: :validation}} = Snakepit.execute(:ping, %{})
      assert {:error, %Error{category: :validation}} = Snakepit.execute("ping", "nope")
      assert {:error, %Error{category: :validation}} = Snakepit.execute("ping", %{}, bogus: 1)
      assert {:error, %Error{category: :validation}} = Snakepit.execute("ping", %{}, timeout: -1)

      assert {:error,
              %Error{category: :validation, details: %{reason: :invalid_binary_parameter}}} =
               Snakepit.execute("process_binary", %{}, binary_parameters: %{"data" => 123})
    end

    test "an unknown pool is a :pool error" do
      assert {:error, %Error{category: :pool, details: %{reason: :unknown_pool}}} =
               Snakepit.execute("ping", %{}, pool: :nowhere)
    end

    test "a call that runs out of time is a :timeout error" do
      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute_stream("infinite_stream", %{delay_ms: 10}, fn _ -> :ok end,
                 timeout: 200
               )
    end
  end

  describe "execute_stream/4" do
    test "ping_stream, as in the quick start" do
      me = self()
      assert :ok = Snakepit.execute_stream("ping_stream", %{count: 5}, &send(me, &1["message"]))

      assert for(_ <- 1..6, do: assert_received(message) && message) ==
               ["pong 1", "pong 2", "pong 3", "pong 4", "pong 5", nil]

      assert {:error, %Error{python_type: "ValueError"}} =
               Snakepit.execute_stream("ping_stream", %{count: -1}, fn _ -> :ok end)
    end

    test "stream_progress delivers every chunk once, in order, spaced in time" do
      me = self()
      steps = 5
      delay = 100

      assert :ok =
               Snakepit.execute_stream(
                 "stream_progress",
                 %{steps: steps, delay_ms: delay},
                 fn chunk ->
                   send(me, {:chunk, System.monotonic_time(:millisecond), chunk})
                 end
               )

      chunks = collect_chunks()
      assert Enum.map(chunks, fn {_t, c} -> c["step"] end) == Enum.to_list(1..steps)

      assert Enum.map(chunks, fn {_t, c} -> c["is_final"] end) ==
               List.duplicate(false, 4) ++ [true]

      {first_at, first} = hd(chunks)
      {last_at, last} = List.last(chunks)
      assert first["total"] == steps and first["message"] == "Processing step 1/5"
      assert is_float(first["progress"]) and last["progress"] == 100.0

      # The first chunk reached the callback while Python was still producing
      # (the last chunk comes 400 ms after the first): a stream buffered until
      # the end would deliver everything in one burst. Half of that spread is
      # required, so a loaded machine delaying the first chunk does not fail it.
      arrivals = Enum.map(chunks, fn {at, _} -> at - first_at end)
      assert last_at - first_at >= (steps - 1) * delay / 2, "arrivals (ms): #{inspect(arrivals)}"

      assert %{"tool_type" => "remote", "worker_id" => "default-" <> _} = last["_metadata"]
      # The tool's own clock, rounded to whole ms: a real duration, not a count.
      assert String.to_integer(last["_metadata"]["execution_time_ms"]) >= (steps - 1) * delay / 2
    end

    test "a stream without a final chunk ends with a synthetic one" do
      me = self()
      :ok = Snakepit.execute_stream("stream_numbers", %{count: 3}, &send(me, {:chunk, 0, &1}))

      chunks = Enum.map(collect_chunks(), &elem(&1, 1))
      assert Enum.map(Enum.take(chunks, 3), & &1["number"]) == [0, 1, 2]

      assert %{"is_final" => true, "_metadata" => %{"synthetic_final" => "true"}} =
               List.last(chunks)

      assert length(chunks) == 4
    end

    test "StreamChunk metadata and async generators" do
      me = self()
      :ok = Snakepit.execute_stream("stream_chunks", %{count: 2}, &send(me, {:chunk, 0, &1}))
      [first, last] = Enum.map(collect_chunks(), &elem(&1, 1))

      assert first == %{
               "index" => 0,
               "is_final" => false,
               "_metadata" => %{"source" => "showcase"}
             }

      assert %{"index" => 1, "is_final" => true, "_metadata" => %{"source" => "showcase"}} = last

      :ok = Snakepit.execute_stream("async_stream", %{count: 3}, &send(me, {:chunk, 0, &1}))
      indexes = for {_, c} <- collect_chunks(), Map.has_key?(c, "index"), do: c["index"]
      assert indexes == [0, 1, 2]
    end

    test "an error mid-stream arrives after the chunks before it" do
      me = self()

      assert {:error, %Error{category: :python} = error} =
               Snakepit.execute_stream("fail_midstream", %{after: 2}, &send(me, {:chunk, 0, &1}))

      assert Enum.map(collect_chunks(), fn {_, c} -> c["i"] end) == [0, 1]
      assert error.python_type == "RuntimeError"
      assert error.python_traceback =~ "fail_midstream"
    end

    test ":halt from the callback stops the stream and the generator is closed" do
      marker = Path.join(System.tmp_dir!(), "snakepit-halt-#{System.unique_integer([:positive])}")
      on_exit(fn -> File.rm(marker) end)

      assert :ok =
               Snakepit.execute_stream(
                 "infinite_stream",
                 %{delay_ms: 5, marker_path: marker},
                 fn chunk -> if chunk["tick"] >= 3, do: :halt, else: :ok end
               )

      # The generator's `finally` writes the marker once the cancel reaches it.
      assert Wait.until(fn -> File.read(marker) == {:ok, "closed"} end, 5_000)
    end

    test "a callback that is not a function is refused" do
      assert {:error, %Error{category: :validation}} =
               Snakepit.execute_stream("stream_numbers", %{}, :not_a_function)
    end
  end

  defp collect_chunks(acc \\ []) do
    receive do
      {:chunk, at, chunk} -> collect_chunks([{at, chunk} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
