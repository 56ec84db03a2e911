defmodule Snakepit.UniversalCallTest do
  # Snakepit.call/4, attr/3, method/4, release/1, refs and stream refs,
  # against real workers.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Ref, StreamRef}
  alias Snakepit.Test.{Pools, Wait}

  @showcase Snakepit.Python.default_adapter()

  setup_all do
    pool = :"universal_pool_#{System.unique_integer([:positive])}"

    {:ok, pid} =
      Snakepit.Pool.start_link(
        name: pool,
        size: 1,
        adapter: @showcase,
        python_path: [Pools.adapters_dir()]
      )

    on_exit(fn -> Process.exit(pid, :shutdown) end)
    %{pool: pool}
  end

  defp fixture(pool, function, args \\ [], opts \\ []),
    do: Snakepit.call("objects_fixtures", function, args, Keyword.put(opts, :pool, pool))

  defp start_pool(opts \\ []),
    do: Pools.start!(@showcase, opts)

  # Live refs of the worker holding `probe` (the probe included).
  defp live(probe) do
    {:ok, %{"live" => live}} = Snakepit.Objects.live_refs(probe)
    live
  end

  defp marker do
    path = Path.join(System.tmp_dir!(), "snakepit_marker_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  describe "calling Python functions" do
    test "math.sqrt, json.dumps with kwargs, a dotted path, a coroutine function", %{pool: pool} do
      assert {:ok, 4.0} = Snakepit.call("math", "sqrt", [16], pool: pool)

      assert {:ok, ~s({\n  "a": 1\n})} =
               Snakepit.call("json", "dumps", [%{a: 1}], kwargs: %{indent: 2}, pool: pool)

      assert {:ok, "a/b"} = Snakepit.call("os", "path.join", ["a", "b"], pool: pool)
      assert {:ok, 42} = fixture(pool, "later", [42])
      assert {:ok, 3.141592653589793} = Snakepit.attr("math", "pi", pool: pool)
    end

    test "bytes come back as binaries, also inside containers", %{pool: pool} do
      assert {:ok, <<0, 0, 0>>} = Snakepit.call("builtins", "bytes", [3], pool: pool)
      assert {:ok, [<<0, 255>>, %{"raw" => "abc"}]} = fixture(pool, "nested_bytes")
    end

    test "a dataclass comes back as its fields", %{pool: pool} do
      assert {:ok, %{"x" => 1, "y" => 2, "label" => "p"}} = fixture(pool, "point")
    end

    test "errors: missing module, missing attribute, bad arguments", %{pool: pool} do
      assert {:error, %Error{category: :python, python_type: "ModuleNotFoundError"} = error} =
               Snakepit.call("no_such_module_here", "f", [], pool: pool)

      assert error.python_traceback =~ "no_such_module_here"

      assert {:error, %Error{category: :python, python_type: "AttributeError"}} =
               Snakepit.call("math", "no_such_function", [], pool: pool)

      assert {:error, %Error{category: :python, python_type: "TypeError"}} =
               Snakepit.call("math", "sqrt", ["four"], pool: pool)

      # What JSON cannot carry is refused before anything is sent.
      assert {:error, %Error{category: :validation, details: %{reason: :invalid_argument}}} =
               Snakepit.call("math", "sqrt", [self()], pool: pool)

      for bad <- ["", "a b", "1x", "a..b", nil, :sqrt, "sqrt()"] do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.call("math", bad, [], pool: pool)

        assert {:error, %Error{category: :validation}} = Snakepit.call(bad, "f", [], pool: pool)
      end

      for bad_args <- [%{}, {1}, [1 | 2], "x"] do
        assert {:error, %Error{category: :validation}} =
                 Snakepit.call("math", "sqrt", bad_args, pool: pool)
      end

      assert {:error, %Error{details: %{option: :kwargs}}} =
               Snakepit.call("math", "sqrt", [1], kwargs: [1, 2], pool: pool)

      assert {:error, %Error{category: :validation}} =
               Snakepit.execute("snakepit.call", %{}, pool: pool)
    end
  end

  describe "hostile input and faults" do
    test "deep nesting and colliding keys either way are refused with the path", %{pool: pool} do
      deep = Enum.reduce(1..200, 0, fn _, acc -> [acc] end)

      assert {:error, %Error{category: :validation, details: %{reason: :too_deep}}} =
               Snakepit.call("builtins", "len", [deep], pool: pool)

      assert {:error, %Error{category: :validation, details: %{reason: :duplicate_key}}} =
               Snakepit.call("builtins", "dict", [], kwargs: [a: 1, a: 2], pool: pool)

      # json.loads builds what the worker cannot send back: too deep.
      assert {:error, %Error{category: :validation} = error} =
               Snakepit.call(
                 "json",
                 "loads",
                 [String.duplicate("[", 300) <> String.duplicate("]", 300)],
                 pool: pool
               )

      assert error.message =~ "deeper than 128"
      # The worker still serves.
      assert {:ok, 2.0} = Snakepit.call("math", "sqrt", [4], pool: pool)
    end

    test "a consumer killed during a fetch stops the Python iterator and frees it" do
      pool = start_pool(python_path: [Pools.adapters_dir()])
      {:ok, probe} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
      before = live(probe)
      closed = marker()
      {:ok, gen} = Snakepit.call("objects_fixtures", "slow", [2.0, 10, closed], pool: pool)
      assert live(probe) == before + 1
      consumer = spawn(fn -> Enum.to_list(gen) end)

      # The generator runs (in its first 2 s step) once the fetch reached it.
      assert Wait.until(fn -> File.read(closed) == {:ok, "started"} end, 5_000)
      Process.exit(consumer, :kill)
      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 5_000)
      assert Wait.until(fn -> live(probe) == before end, 5_000)

      assert_raise Error, ~r/stopped when a fetch timed out or was cancelled/, fn ->
        Enum.to_list(gen)
      end
    end
  end

  describe "refs" do
    test "an object without a plain form is a ref; methods, attributes, passing it back", %{
      pool: pool
    } do
      assert {:ok, %Ref{type_name: "Counter", python_module: "objects_fixtures"} = counter} =
               fixture(pool, "Counter")

      assert inspect(counter) =~ "objects_fixtures.Counter"
      assert inspect(counter) =~ "Counter(value=0)"
      assert {:ok, 5} = Snakepit.method(counter, "increment", [5])
      assert {:ok, 7} = Snakepit.method(counter, "increment", [], kwargs: [by: 2])
      assert {:ok, 7} = Snakepit.attr(counter, "value")
      assert {:ok, "Counter"} = Snakepit.attr(counter, "__class__.__name__")

      {:ok, range} = Snakepit.call("builtins", "range", [100], pool: pool)
      assert {:ok, list} = Snakepit.call("builtins", "list", [range], pool: pool)
      assert list == Enum.to_list(0..99)
      # Anywhere in a map or list.
      assert {:ok, 4950} = fixture(pool, "total", [%{"xs" => range}])
      assert {:ok, 4950} = fixture(pool, "total", [], kwargs: %{data: %{"xs" => range}})

      :ok = Snakepit.release(counter)

      assert {:error, %Error{category: :validation, details: %{reason: :ref_released}}} =
               Snakepit.method(counter, "increment", [1])

      # Releasing twice is fine.
      assert :ok = Snakepit.release(counter)
    end

    test "seed 003's range example, as written", %{pool: pool} do
      {:ok, stream} = Snakepit.call("builtins", "range", [10], pool: pool)

      assert Enum.take(stream, 5) == [0, 1, 2, 3, 4]
      assert Enum.sum(stream) == 45
      assert Enum.map(stream, &(&1 * 2)) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
      assert Enum.to_list(stream) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
      assert Enum.count(stream) == 10
      # A file iterates itself: enumerations read on where the last stopped.
      {:ok, %Ref{type_name: "StringIO"} = file} =
        Snakepit.call("io", "StringIO", ["a\nb\nc\nd\n"], pool: pool, kwargs: [])

      assert Enum.take(file, 2) == ["a\n", "b\n"]
      assert Enum.take(file, 1) == ["c\n"]
      assert Enum.to_list(file) == ["d\n"]
      assert {:ok, 8} = Snakepit.method(file, "tell", [])
      assert {:ok, sized} = fixture(pool, "Sized", [3])
      assert Enum.count(sized) == 3
      assert Enum.to_list(sized) == [0, 1, 2]
    end

    test "a ref from another pool, refs of two workers in one call", %{pool: pool} do
      other = start_pool()
      {:ok, range} = Snakepit.call("builtins", "range", [3], pool: pool)
      {:ok, other_range} = Snakepit.call("builtins", "range", [3], pool: other)

      assert {:error, %Error{details: %{reason: :ref_pool_mismatch}}} =
               Snakepit.call("builtins", "list", [range], pool: other)

      assert {:error, %Error{details: %{reason: :refs_on_different_workers}}} =
               Snakepit.call("builtins", "zip", [range, other_range], pool: pool)
    end

    test "a ref whose worker restarted is :ref_lost, never another object" do
      pool = start_pool()
      {:ok, counter} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
      [worker] = Snakepit.Pool.workers(pool)
      System.cmd("kill", ["-9", Integer.to_string(worker.os_pid)])

      assert Wait.until(
               fn ->
                 match?([%{uid: uid}] when uid != worker.uid, Snakepit.Pool.workers(pool))
               end,
               10_000
             )

      assert {:error, %Error{category: :validation, details: %{reason: :ref_lost}}} =
               Snakepit.method(counter, "increment", [1])

      assert {:error, %Error{details: %{reason: :ref_lost}}} =
               Snakepit.call("builtins", "list", [counter], pool: pool)

      assert_raise Error, ~r/gone/, fn -> Enum.to_list(counter) end
      assert :ok = Snakepit.release(counter)
    end

    test "a session's refs are released when the session ends" do
      pool = start_pool(python_path: [Pools.adapters_dir()])
      {:ok, probe} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
      before = live(probe)
      session = "universal_#{System.unique_integer([:positive])}"

      for _ <- 1..3 do
        {:ok, %Ref{session_id: ^session}} =
          Snakepit.call("objects_fixtures", "Counter", [], pool: pool, session_id: session)
      end

      assert live(probe) == before + 3
      :ok = Snakepit.Session.delete(session)
      assert Wait.until(fn -> live(probe) == before end, 5_000)
    end

    test "a process's refs are released when it exits" do
      pool = start_pool(python_path: [Pools.adapters_dir()])
      {:ok, probe} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
      before = live(probe)

      task =
        Task.async(fn ->
          for _ <- 1..3,
              do: {:ok, _} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)

          {:ok, gen} = Snakepit.call("objects_fixtures", "endless", [], pool: pool)
          Enum.take(gen, 2)
        end)

      assert Task.await(task) == [0, 1]
      assert Wait.until(fn -> live(probe) == before end, 5_000)
    end

    test "an unused ref expires after the pool's :ref_ttl" do
      pool = start_pool(python_path: [Pools.adapters_dir()], ref_ttl: 100)
      {:ok, counter} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
      # Counting the worker's refs does not use them.
      assert Wait.until(fn -> live(counter) == 0 end, 5_000)

      assert {:error, %Error{details: %{reason: :ref_released}} = error} =
               Snakepit.attr(counter, "value")

      assert error.message =~ "expired"
    end

    test "a process holds at most :max_refs live refs" do
      pool = start_pool(python_path: [Pools.adapters_dir()], max_refs: 3)

      refs =
        for _ <- 1..3, do: elem(Snakepit.call("objects_fixtures", "Counter", [], pool: pool), 1)

      assert {:error, %Error{category: :validation, details: %{reason: :too_many_refs}}} =
               Snakepit.call("objects_fixtures", "Counter", [], pool: pool)

      :ok = Snakepit.release(hd(refs))
      assert {:ok, %Ref{}} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
    end

    test "allow_call: false refuses; a module list allows only those modules" do
      off = start_pool(allow_call: false)

      assert {:error, %Error{category: :validation, details: %{reason: :call_not_allowed}}} =
               Snakepit.call("math", "sqrt", [4], pool: off)

      # The pool's tools still work.
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: off)

      listed = start_pool(allow_call: ["math", "os"])
      assert {:ok, 2.0} = Snakepit.call("math", "sqrt", [4], pool: listed)
      assert {:ok, _} = Snakepit.call("os.path", "basename", ["/a/b"], pool: listed)

      assert {:error, %Error{details: %{reason: :call_not_allowed}}} =
               Snakepit.call("json", "dumps", [1], pool: listed)

      assert {:error, %Error{details: %{reason: :call_not_allowed}}} =
               Snakepit.call("mathx", "f", [], pool: listed)

      for bad <- [nil, "math", ["a b"], [:math], [1 | 2]] do
        assert {:error, %Error{details: %{option: :allow_call}}} =
                 Snakepit.Pool.start_link(name: :never_started, allow_call: bad)
      end
    end
  end

  describe "stream refs" do
    test "itertools.count continues where it stopped", %{pool: pool} do
      {:ok, counter} = Snakepit.call("itertools", "count", [1], pool: pool)
      assert %StreamRef{stream_type: "iterator", python_module: "itertools"} = counter
      assert Enum.take(counter, 10) == Enum.to_list(1..10)
      assert Enum.take(counter, 5) == Enum.to_list(11..15)
      assert Enum.take(counter, 1000) == Enum.to_list(16..1015)
      :ok = Snakepit.release(counter)
    end

    test "a generator, then exhausted", %{pool: pool} do
      {:ok, gen} = fixture(pool, "numbers", [5])
      assert %StreamRef{stream_type: "generator", type_name: "generator"} = gen
      assert %{"__type__" => "stream_ref", "__schema__" => 1} = StreamRef.to_wire_format(gen)
      assert Enum.to_list(gen) == [0, 1, 2, 3, 4]
      assert Enum.to_list(gen) == []
    end

    test "an async generator is consumed natively", %{pool: pool} do
      {:ok, gen} = fixture(pool, "async_numbers", [50])
      assert %StreamRef{stream_type: "async_generator"} = gen
      assert Enum.take(gen, 10) == Enum.to_list(0..9)
      assert Enum.to_list(gen) == Enum.to_list(10..49)
    end

    test "a dict holding a generator keeps the stream ref in place", %{pool: pool} do
      {:ok, %{"status" => "ok", "data" => %StreamRef{} = data}} = fixture(pool, "with_generator")
      assert Enum.to_list(data) == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    end

    test "a generator that raises: the items before it, then a Snakepit.Error", %{pool: pool} do
      {:ok, gen} = fixture(pool, "fails_after", [30])
      assert Enum.take(gen, 20) == Enum.to_list(0..19)

      error = assert_raise Error, fn -> Enum.each(gen, &send(self(), {:item, &1})) end
      assert error.python_type == "ValueError"
      assert error.python_traceback =~ "failed after 30 items"
      for i <- 20..29, do: assert_received({:item, ^i})
      refute_received {:item, _}
    end

    test "stopping early, then releasing: the worker's registry is back to its size", %{
      pool: pool
    } do
      {:ok, probe} = fixture(pool, "Counter")
      before = live(probe)
      closed = marker()
      {:ok, gen} = fixture(pool, "endless", [closed])
      assert Enum.take(gen, 3) == [0, 1, 2]
      assert live(probe) == before + 1
      :ok = Snakepit.release(gen)
      assert live(probe) == before
      # Released, the generator is closed in Python.
      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 5_000)

      # An enumeration of a ref that stops early releases its own iterator,
      # also when its one batch held every item.
      for size <- [10, 1_000_000] do
        {:ok, range} = Snakepit.call("builtins", "range", [size], pool: pool)
        assert Enum.take(range, 3) == [0, 1, 2]
        assert Enum.find(range, &(&1 == 5)) == 5
        assert live(probe) == before + 1
        :ok = Snakepit.release(range)
      end
    end

    test "rows with Stream.chunk_every", %{pool: pool} do
      {:ok, rows} = fixture(pool, "load_large_dataset", [1000])

      batches =
        rows
        |> Stream.chunk_every(100)
        |> Stream.map(&Kernel.length/1)
        |> Enum.to_list()

      assert batches == List.duplicate(100, 10)
    end

    test "the item timeout and the stream timeout say which fired and stop Python", %{pool: pool} do
      closed = marker()
      {:ok, gen} = fixture(pool, "slow", [0.5, 100, closed], item_timeout: 100)
      error = assert_raise Error, fn -> Enum.to_list(gen) end
      assert error.category == :timeout
      assert error.details.timeout == :item_timeout
      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 5_000)

      closed = marker()
      {:ok, gen} = fixture(pool, "slow", [0.05, 1000, closed], stream_timeout: 300)
      error = assert_raise Error, fn -> Enum.to_list(gen) end
      assert error.details.timeout == :stream_timeout
      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 5_000)

      # An iterator slower than half its item timeout, but within it, is
      # fine: a fetch does not wait for a second item it may not get in time.
      {:ok, gen} = fixture(pool, "slow", [0.3, 4], item_timeout: 1_000)
      assert Enum.to_list(gen) == [0, 1, 2, 3]
    end

    test "profiles give the options of a library's calls", %{pool: pool} do
      Application.put_env(:snakepit, :profiles, %{quick: [item_timeout: 100]})
      Application.put_env(:snakepit, :library_profiles, %{"objects_fixtures" => :quick})

      on_exit(fn ->
        Application.delete_env(:snakepit, :profiles)
        Application.delete_env(:snakepit, :library_profiles)
      end)

      {:ok, gen} = fixture(pool, "slow", [0.5, 3])
      assert gen.item_timeout == 100
      assert %Error{details: %{timeout: :item_timeout}} = catch_error(Enum.to_list(gen))

      {:ok, gen} = fixture(pool, "slow", [0.5, 3], item_timeout: :infinity)
      assert gen.item_timeout == :infinity
      :ok = Snakepit.release(gen)

      assert {:error, %Error{details: %{option: :profile}}} =
               fixture(pool, "numbers", [1], profile: :no_such_profile)
    end
  end

  # The test command installs NumPy into its venv (Snakepit.Test.TestPython).
  @numpy_skip Snakepit.Test.TestPython.skip_reason("numpy")

  describe "NumPy" do
    if @numpy_skip do
      @describetag skip: @numpy_skip
    end

    setup do
      %{numpy_pool: start_pool(python: Snakepit.Test.TestPython.path(), max_plain_bytes: 1024)}
    end

    test "arrays and scalars come back as plain values; large arrays as refs", %{
      numpy_pool: pool
    } do
      {:ok, array} = Snakepit.call("numpy", "arange", [6], pool: pool)
      assert array == [0, 1, 2, 3, 4, 5]

      {:ok, zeros} = Snakepit.call("numpy", "zeros", [[2, 3]], pool: pool)
      assert zeros == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]

      assert {:ok, 1.5} = Snakepit.call("numpy", "float64", [1.5], pool: pool)

      # 10 000 doubles: past the pool's max_plain_bytes (1 KiB).
      {:ok, %Ref{type_name: "ndarray"} = big} =
        Snakepit.call("numpy", "ones", [10_000], pool: pool)

      assert {:ok, 10_000.0} = Snakepit.method(big, "sum", [])
      assert {:ok, [10_000]} = Snakepit.attr(big, "shape")
    end
  end
end
