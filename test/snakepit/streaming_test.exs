defmodule Snakepit.StreamingTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Pool}
  alias Snakepit.Test.{Mailbox, OsProcesses, Pools, Wait}

  defp start_bulk_pool(opts \\ []), do: Pools.start!("bulk_adapters.BulkAdapter", opts)

  defp marker_path do
    path = Path.join(System.tmp_dir!(), "snakepit-stream-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  defp closed?(marker), do: File.read(marker) == {:ok, "closed"}

  describe "cancellation closes the Python generator" do
    test "when the caller is killed" do
      marker = marker_path()
      test = self()

      task =
        Task.async(fn ->
          Snakepit.execute_stream(
            "infinite_stream",
            %{delay_ms: 10, marker_path: marker},
            fn _ -> send(test, :streaming) end
          )
        end)

      assert_receive :streaming, 5_000
      Task.shutdown(task, :brutal_kill)
      assert Wait.until(fn -> closed?(marker) end, 500)
    end

    test "when the stream times out" do
      marker = marker_path()

      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute_stream(
                 "infinite_stream",
                 %{delay_ms: 10, marker_path: marker},
                 fn _ -> :ok end,
                 timeout: 300
               )

      assert Wait.until(fn -> closed?(marker) end, 500)
    end

    test "when no chunk comes within the idle timeout" do
      pool = start_bulk_pool()
      marker = marker_path()
      me = self()

      assert {:error, %Error{category: :timeout, details: %{reason: :idle_timeout}}} =
               Snakepit.execute_stream(
                 "then_silence",
                 %{silence_ms: 10_000, marker_path: marker},
                 &send(me, &1),
                 pool: pool,
                 idle_timeout: 200
               )

      assert_received %{"hello" => true}
      assert Wait.until(fn -> closed?(marker) end, 500)
    end

    test "when the callback raises, and the exception reaches the caller" do
      marker = marker_path()

      assert_raise RuntimeError, "callback failed", fn ->
        Snakepit.execute_stream("infinite_stream", %{delay_ms: 5, marker_path: marker}, fn
          %{"tick" => 3} -> raise "callback failed"
          _ -> :ok
        end)
      end

      assert Wait.until(fn -> closed?(marker) end, 500)
    end

    test "no chunk of a halted stream reaches the caller afterwards" do
      pool = start_bulk_pool()

      for _ <- 1..20 do
        assert :ok =
                 Snakepit.execute_stream(
                   "many_chunks",
                   %{count: 100_000},
                   fn %{"i" => i} -> if i == 5, do: :halt end,
                   pool: pool
                 )

        assert {:messages, []} = Process.info(self(), :messages)
      end
    end

    test "{:halt, reason} stops the stream with an error carrying the reason" do
      marker = marker_path()

      assert {:error, %Error{details: %{reason: :halted, halt_reason: :enough}}} =
               Snakepit.execute_stream(
                 "infinite_stream",
                 %{delay_ms: 5, marker_path: marker},
                 fn _ -> {:halt, :enough} end
               )

      assert Wait.until(fn -> closed?(marker) end, 500)
    end
  end

  describe "binaries" do
    test "round trips are byte-exact" do
      blob = :crypto.strong_rand_bytes(1024 * 1024 + 7)

      assert {:ok, reversed} =
               Snakepit.execute("process_binary", %{operation: "reverse"},
                 binary_parameters: %{data: blob}
               )

      assert reversed == blob |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()

      assert {:ok, %{"sha256" => digest, "size" => size}} =
               Snakepit.execute("process_binary", %{}, binary_parameters: %{"data" => blob})

      assert digest == Base.encode16(:crypto.hash(:sha256, blob), case: :lower)
      assert size == byte_size(blob)
    end

    test "yielded bytes arrive as base64 by default, or raw on request" do
      pool = start_bulk_pool()
      me = self()
      expected = :binary.list_to_bin(Enum.to_list(0..255)) <> <<0, 0, 0, 0>>

      :ok =
        Snakepit.execute_stream("stream_bytes", %{count: 2, size: 260}, &send(me, &1), pool: pool)

      assert_received %{"raw_data_base64" => text, "is_final" => false}
      assert Base.decode64!(text) == expected

      :ok =
        Snakepit.execute_stream("stream_bytes", %{count: 2, size: 260}, &send(me, {:raw, &1}),
          pool: pool,
          raw_binaries: true
        )

      assert_received {:raw, %{"data" => ^expected, "is_final" => false}}
    end

    @tag timeout: 120_000
    test "a single 100 MB result and a 1 GiB stream of 1 MiB chunks" do
      pool = start_bulk_pool()
      mb = 100 * 1000 * 1000
      assert {:ok, result} = Snakepit.execute("big_result", %{size: mb}, pool: pool)
      assert byte_size(result) == mb and binary_part(result, mb - 1, 1) == "Z"

      me = self()

      :ok =
        Snakepit.execute_stream(
          "stream_bytes",
          %{count: 1024, size: 1024 * 1024},
          &send(me, {:bytes, byte_size(&1["data"] || "")}),
          pool: pool,
          raw_binaries: true
        )

      assert total_bytes(0) == 1024 * 1024 * 1024
    end

    test "a message beyond the pool's limit is a clear error" do
      pool = start_bulk_pool(max_message_bytes: 1024 * 1024)

      assert {:error,
              %Error{category: :transport, details: %{reason: :message_too_large}} = error} =
               Snakepit.execute("big_result", %{size: 2 * 1024 * 1024}, pool: pool)

      assert error.message =~ ":max_message_bytes"
      assert {:ok, small} = Snakepit.execute("big_result", %{size: 1000}, pool: pool)
      assert byte_size(small) == 1000
    end

    test "a non-binary binary parameter is refused before anything is sent" do
      assert {:error,
              %Error{category: :validation, details: %{reason: :invalid_binary_parameter}}} =
               Snakepit.execute("process_binary", %{}, binary_parameters: %{"data" => [1, 2]})
    end
  end

  describe "flow control" do
    @tag timeout: 120_000
    test "a slow callback keeps the payload in flight and the worker's memory bounded" do
      pool = start_bulk_pool()
      [worker] = Pool.workers(pool)
      chunks = 1024
      mib = 1024 * 1024
      me = self()

      # 1 GiB in 1 MiB chunks into a callback that sleeps on every chunk:
      # without backpressure the producer would run far ahead of it. At every
      # chunk the callback measures the payload already waiting in its
      # mailbox (large payloads are binaries outside the process heap, so
      # :erlang.memory would not show them all).
      :ok =
        Snakepit.execute_stream(
          "stream_bytes",
          %{count: chunks, size: mib},
          fn chunk ->
            if byte_size(chunk["data"] || "") == mib, do: send(me, :chunk)
            Process.sleep(2)
            send(me, {:waiting, Mailbox.waiting_payload()})
          end,
          pool: pool,
          raw_binaries: true
        )

      waiting_peak = Mailbox.peak(:waiting)
      assert Mailbox.count(:chunk) == chunks

      # The NIF sends at most 16 MiB of payload ahead of the callback.
      assert waiting_peak <= 16 * mib, "#{div(waiting_peak, mib)} MiB waited in the mailbox"

      worker_peak = peak_rss_kib(worker.os_pid) * 1024
      assert worker_peak < 300 * mib, "worker peak RSS #{div(worker_peak, mib)} MiB"
    end

    test "chunks larger than the window of bytes in flight still arrive, in order" do
      pool = start_bulk_pool()
      me = self()

      :ok =
        Snakepit.execute_stream(
          "stream_bytes",
          %{count: 3, size: 20 * 1024 * 1024},
          &send(me, {:size, byte_size(&1["data"] || "")}),
          pool: pool,
          raw_binaries: true
        )

      sizes = for _ <- 1..4, do: assert_received({:size, size}) && size
      assert sizes == [20 * 1024 * 1024, 20 * 1024 * 1024, 20 * 1024 * 1024, 0]
    end
  end

  describe "many small chunks" do
    test "stream at full speed without losing the connection" do
      pool = start_bulk_pool()
      me = self()

      for _ <- 1..3 do
        assert :ok =
                 Snakepit.execute_stream(
                   "many_chunks",
                   %{count: 100_000},
                   fn
                     %{"i" => 99_999} -> send(me, :last)
                     _ -> :ok
                   end,
                   pool: pool
                 )

        assert_received :last
      end
    end
  end

  describe "small chunks under backpressure" do
    test "a paused callback with many tiny chunks in flight keeps the connection" do
      pool = start_bulk_pool()

      # While the callback sleeps, thousands of tiny DATA frames queue in the
      # HTTP/2 window; the connection must hold them, not give up on the peer.
      for _ <- 1..3 do
        assert :ok =
                 Snakepit.execute_stream(
                   "many_chunks",
                   %{count: 20_000},
                   fn
                     %{"i" => 0} -> Process.sleep(300)
                     _ -> :ok
                   end,
                   pool: pool
                 )
      end
    end
  end

  describe "the envelope's reserved keys" do
    defp stream_chunks(pool, args) do
      me = self()
      result = Snakepit.execute_stream("yield_chunks", args, &send(me, {:chunk, &1}), pool: pool)
      {result, received_chunks([])}
    end

    defp received_chunks(acc) do
      receive do
        {:chunk, chunk} -> received_chunks([chunk | acc])
      after
        0 -> Enum.reverse(acc)
      end
    end

    test "a yielded dict's \"is_final\" and \"_metadata\" become the envelope's" do
      pool = start_bulk_pool()

      chunks = [
        %{n: 1, is_final: false},
        %{n: 2, _metadata: %{k: "v"}},
        %{n: 3, _metadata: %{}},
        %{n: 4, is_final: true, _metadata: %{source: "test"}}
      ]

      assert {:ok, [one, two, three, four]} = stream_chunks(pool, %{chunks: chunks})

      assert one == %{"n" => 1, "is_final" => false}
      assert two == %{"n" => 2, "is_final" => false, "_metadata" => %{"k" => "v"}}
      assert three == %{"n" => 3, "is_final" => false}
      assert %{"n" => 4, "is_final" => true, "_metadata" => metadata} = four
      assert %{"source" => "test", "tool_type" => "remote", "worker_id" => _} = metadata
    end

    test "an ill-typed reserved key fails the stream with an error naming it" do
      pool = start_bulk_pool()

      for {key, value} <- [
            {"is_final", "yes"},
            {"is_final", 1},
            {"_metadata", 5},
            {"_metadata", ["k", "v"]},
            {"_metadata", %{"k" => 1}}
          ] do
        marker = marker_path()
        chunks = [%{"n" => 1}, %{"n" => 2, key => value}, %{"n" => 3}]

        assert {{:error, %Error{category: :python, python_type: "InvalidChunk"} = error},
                [%{"n" => 1, "is_final" => false}]} =
                 stream_chunks(pool, %{chunks: chunks, marker_path: marker})

        assert error.message =~ ~s("#{key}"), error.message
        # The generator was closed, its finally ran.
        assert Wait.until(fn -> closed?(marker) end, 5_000)
      end
    end

    test "StreamChunk data holding a reserved key is refused, naming the key" do
      pool = start_bulk_pool()

      for key <- ["is_final", "_metadata"] do
        chunks = [%{"n" => 1}, %{"n" => 2, key => true}]

        assert {{:error, %Error{category: :python, python_type: "InvalidChunk"} = error},
                [%{"n" => 1, "is_final" => false}]} =
                 stream_chunks(pool, %{chunks: chunks, wrap: true})

        assert error.message =~ ~s("#{key}")
      end
    end

    test "chunk metadata may not use the keys the node writes" do
      pool = start_bulk_pool()

      for key <- ["worker_id", "tool_type", "execution_time_ms", "synthetic_final"] do
        assert {{:error, %Error{category: :python, python_type: "InvalidChunk"} = error}, []} =
                 stream_chunks(pool, %{chunks: [%{"n" => 1}], wrap: true, metadata: %{key => "x"}})

        assert error.message =~ ~s("#{key}")
      end
    end
  end

  defp total_bytes(sum) do
    receive do
      {:bytes, n} -> total_bytes(sum + n)
    after
      0 -> sum
    end
  end

  # The kernel's high-water mark of the process's resident memory.
  defp peak_rss_kib(os_pid) do
    assert OsProcesses.alive?(os_pid)
    status = File.read!("/proc/#{os_pid}/status")
    [_, kib] = Regex.run(~r/VmHWM:\s+(\d+) kB/, status)
    String.to_integer(kib)
  end
end
