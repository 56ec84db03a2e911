defmodule Snakepit.HotPathTest do
  # What the fast paths must keep: calls queued on one worker's Python thread
  # are not held up by a slow one, arguments of any size arrive intact, and
  # chunks delivered in batches still reach the callback one by one, in
  # order, and stop at a halt.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{Pools, Wait}

  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  defp marker_path do
    path = Path.join(System.tmp_dir!(), "snakepit-hot-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  describe "unary calls on one worker" do
    test "a quick call is not held up by a slow one that waits outside the GIL" do
      pool = Pools.start!(@showcase)
      marker = marker_path()

      slow =
        Task.async(fn ->
          Snakepit.execute("slow_steps", %{steps: 100, step_ms: 100, marker_path: marker},
            pool: pool,
            timeout: 30_000
          )
        end)

      assert Wait.until(fn -> File.read(marker) == {:ok, "started"} end, 5_000)
      assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool)
      # The slow call (10 s) is still running: the quick one did not wait for it.
      assert Task.yield(slow, 0) == nil
      assert File.read(marker) == {:ok, "started"}

      Task.shutdown(slow, :brutal_kill)
      assert Wait.until(fn -> File.read(marker) == {:ok, "cancelled"} end, 5_000)
    end

    test "many concurrent calls on one worker all get their own answer" do
      pool = Pools.start!(@showcase)

      results =
        1..300
        |> Task.async_stream(&Snakepit.execute("add", %{a: &1, b: 1}, pool: pool),
          max_concurrency: 64,
          timeout: 30_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert results == Enum.map(1..300, &{:ok, &1 + 1})
    end
  end

  describe "arguments of any size" do
    test "large arguments arrive intact" do
      pool = Pools.start!(@showcase)
      words = for i <- 1..20_000, do: "word-#{i}"
      nested = %{"words" => words, "table" => Map.new(1..2_000, &{"k#{&1}", [&1, &1 * 2.5]})}

      assert {:ok, %{"words" => ^words, "table" => table}} =
               Snakepit.execute("echo", nested, pool: pool)

      assert table == nested["table"]
    end

    test "small and large binaries, with small arguments, arrive intact" do
      pool = Pools.start!(@showcase)

      for size <- [0, 10, 64 * 1024, 64 * 1024 + 1, 300_000] do
        blob = :crypto.strong_rand_bytes(size)

        assert {:ok, %{"size" => ^size}} =
                 Snakepit.execute("process_binary", %{},
                   binary_parameters: %{data: blob},
                   pool: pool
                 )
      end
    end

    test "bad input is refused before anything is sent, small or large" do
      pool = Pools.start!(@showcase)
      large = %{"items" => List.duplicate("x", 20_000) ++ [self()]}

      for args <- [%{"pid" => self()}, large] do
        assert {:error,
                %Snakepit.Error{category: :validation, details: %{reason: :invalid_argument}}} =
                 Snakepit.execute("echo", args, pool: pool)
      end
    end
  end

  describe "chunks delivered in batches" do
    test "reach the callback in order, each once, and none after a halt" do
      pool = Pools.start!("bulk_adapters.BulkAdapter")
      counter = :counters.new(1, [])

      for halt_at <- [0, 5, 31, 32, 33, 1_000, 20_000] do
        :counters.put(counter, 1, 0)

        assert :ok =
                 Snakepit.execute_stream(
                   "many_chunks",
                   %{count: 50_000},
                   fn %{"i" => i} ->
                     assert i == :counters.get(counter, 1)
                     :counters.add(counter, 1, 1)
                     if i == halt_at, do: :halt
                   end,
                   pool: pool
                 )

        assert :counters.get(counter, 1) == halt_at + 1
        assert {:messages, []} = Process.info(self(), :messages)
      end
    end
  end

  describe "received binaries" do
    # Large payloads reach Elixir as binaries over the received bytes (no
    # copy); small ones are copied. Both must stay intact however long they
    # are kept, after the stream and garbage collection.
    test "large and small chunks and results stay byte-exact after the call" do
      pool = Pools.start!("bulk_adapters.BulkAdapter")

      block = fn size ->
        :binary.copy(:binary.list_to_bin(Enum.to_list(0..255)), div(size, 256))
      end

      kept =
        for size <- [1_024, 64 * 1_024, 1_048_576] do
          me = self()

          assert :ok =
                   Snakepit.execute_stream(
                     "stream_bytes",
                     %{count: 4, size: size},
                     fn
                       %{"data" => data} -> send(me, {:chunk, data})
                       _ -> :ok
                     end,
                     pool: pool,
                     raw_binaries: true
                   )

          chunks =
            for _ <- 1..4 do
              assert_received {:chunk, data}
              data
            end

          {size, chunks}
        end

      {:ok, result} = Snakepit.execute("big_result", %{size: 2_000_000}, pool: pool)
      :erlang.garbage_collect()

      for {size, chunks} <- kept do
        assert length(chunks) == 4
        assert Enum.all?(chunks, &(&1 == block.(size)))
      end

      assert result == :binary.copy("Z", 2_000_000)
    end
  end
end
