defmodule Snakepit.WorkerOutputTest do
  # Not async: it lowers the Logger level, which is global, and times calls.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Pool
  alias Snakepit.Test.Pools

  @moduletag timeout: 120_000

  @gib 1024 * 1024 * 1024

  defmodule Forwarder do
    @moduledoc "A `:logger` handler sending a test the log events of its pools' workers."

    @doc false
    def log(%{meta: %{snakepit_worker: id} = meta} = event, %{
          config: %{pid: pid, prefix: prefix}
        }) do
      if String.starts_with?(id, prefix) do
        send(pid, {:log, event.level, text(event.msg)})
        send(pid, {:log_meta, event.level, text(event.msg), meta})
      end
    end

    def log(_event, _config), do: :ok

    defp text({:string, chardata}), do: IO.chardata_to_string(chardata)

    defp text({format, args}) when is_list(args),
      do: format |> :io_lib.format(args) |> to_string()

    defp text(other), do: inspect(other)
  end

  setup context do
    level = Logger.level()
    Logger.configure(level: :info)
    handler = :"snakepit_test_#{System.unique_integer([:positive])}"
    # Pools from Snakepit.Test.Pools are named test_pool_<n>; their workers test_pool_<n>-<slot>.
    config = %{config: %{pid: self(), prefix: "test_pool_"}}
    :ok = :logger.add_handler(handler, Forwarder, config)

    on_exit(fn ->
      :logger.remove_handler(handler)
      Logger.configure(level: level)
    end)

    context
  end

  test "a worker printing 1 GiB of lines leaves the pool answering worker_info/1 within 1 s" do
    parent = self()

    capture_log(fn ->
      pool = Pools.start!("hardening_adapters.PrinterAdapter")
      {:ok, %{pid: pool_pid}} = Pool.lookup(pool)

      # 1 GiB of 100-byte lines, ten million lines, half on stderr and half on
      # stdout. Printing it takes about 1.2 s here (2 cores).
      flood =
        Task.async(fn ->
          half = div(@gib, 2)
          {:ok, ^half} = Snakepit.execute("flood", %{total_bytes: half}, pool: pool)
          args = %{total_bytes: half, stream: "stdout"}
          {:ok, ^half} = Snakepit.execute("flood", args, pool: pool)
          send(parent, :flooded)
        end)

      samples = sample_until_flooded(pool, pool_pid, [])
      Task.await(flood, 60_000)

      # Every sample taken while the worker printed answered in time, and the
      # pool's mailbox stayed short (one batch of output per worker at most).
      assert samples != []
      slowest = samples |> Enum.map(& &1.latency_ms) |> Enum.max()
      assert slowest < 1_000, "worker_info/1 took #{slowest} ms"
      longest_queue = samples |> Enum.map(& &1.queue) |> Enum.max()
      assert longest_queue < 50, "#{longest_queue} messages waited for the pool"

      # Dropped lines are counted, and reported to Logger (once a second at most).
      {:ok, [info]} = Pool.worker_info(pool)
      assert info.output_dropped_lines > 9_000_000
      assert info.output_dropped_bytes > 900_000_000
      {:ok, stats} = Pool.stats(pool)
      assert stats.output_dropped_lines == info.output_dropped_lines

      assert_receive {:log, :warning, "[" <> report}, 5_000
      assert report =~ ~r/^#{pool}-1\] dropped \d+ lines \(\d+ bytes\) of worker output/

      # Some lines of each stream made it through.
      assert await_line(~r/^\[#{pool}-1 stderr\] x{99}$/)
      assert await_line(~r/^\[#{pool}-1 stdout\] x{99}$/)
    end)
  end

  test "an adapter printing 100 MB while it is created starts in bounded time" do
    capture_log(fn ->
      started = System.monotonic_time(:millisecond)

      pool =
        Pools.start!("hardening_adapters.LoudInitAdapter",
          env: %{"SNAKEPIT_TEST_INIT_BYTES" => "100000000"}
        )

      elapsed = System.monotonic_time(:millisecond) - started
      # It took 17 s here when every line went to the pool; now about 0.4 s.
      assert elapsed < 5_000, "the pool took #{elapsed} ms to start"
      assert {:ok, "pong"} = Snakepit.execute("ping", %{}, pool: pool)
      assert_receive {:log, :warning, "[" <> report}, 5_000
      assert report =~ "of worker output"
    end)
  end

  test "lines under the limits all reach Logger, in order, none reported dropped" do
    capture_log(fn ->
      pool = Pools.start!("hardening_adapters.PrinterAdapter")
      for i <- 1..50, do: {:ok, true} = Snakepit.execute("say", %{text: "line #{i}"}, pool: pool)
      {:ok, true} = Snakepit.execute("say", %{text: "the end"}, pool: pool)
      end_line = "[#{pool}-1 stderr] the end"
      assert_receive {:log, :info, ^end_line}, 5_000

      said = for line <- logged_lines(), line =~ "stderr] line ", do: line
      assert said == for(i <- 1..50, do: "[#{pool}-1 stderr] line #{i}")
      assert {:ok, [%{output_dropped_lines: 0, output_dropped_bytes: 0}]} = Pool.worker_info(pool)
    end)
  end

  describe "Python's logging" do
    test "a record reaches Logger at its level, with pool, worker, logger, tool, session and metadata" do
      log =
        capture_log(fn ->
          pool = Pools.start!("logging_adapters.LoggingAdapter")
          worker_id = "#{pool}-1"

          # Made while the adapter was created: no tool, no session.
          assert_receive {:log_meta, :info, "adapter created", meta}, 5_000
          assert %{pool: ^pool, worker_id: ^worker_id, python_logger: "app.tools"} = meta
          refute Map.has_key?(meta, :tool) or Map.has_key?(meta, :session_id)

          assert {:ok, true} =
                   Snakepit.execute("log_it", %{level: "WARNING", message: "careful"},
                     pool: pool,
                     session_id: "logging_session",
                     metadata: %{trace_id: "t-42"}
                   )

          assert_receive {:log_meta, :warning, "careful", meta}, 5_000

          assert %{
                   pool: ^pool,
                   worker_id: ^worker_id,
                   python_logger: "app.tools",
                   tool: "log_it",
                   session_id: "logging_session",
                   call_metadata: %{"trace_id" => "t-42"}
                 } = meta

          # A traceback stays with its record.
          args = %{level: "ERROR", message: "it failed", with_traceback: true}
          assert {:ok, true} = Snakepit.execute("log_it", args, pool: pool)

          assert_receive {:log_meta, :error, "it failed\nTraceback" <> trace, %{tool: "log_it"}},
                         5_000

          assert trace =~ "ZeroDivisionError: division by zero"

          for {level, atom} <- [{"INFO", :info}, {"CRITICAL", :critical}] do
            {:ok, true} = Snakepit.execute("log_it", %{level: level, message: level}, pool: pool)
            assert_receive {:log_meta, ^atom, ^level, _}, 5_000
          end

          # Below the worker's level (INFO): not sent.
          {:ok, true} =
            Snakepit.execute("log_it", %{level: "DEBUG", message: "quiet"}, pool: pool)

          # warnings.warn, and a print (a plain line at :info).
          assert {:ok, true} = Snakepit.execute("warn", %{message: "deprecated"}, pool: pool)
          assert_receive {:log_meta, :warning, warning, %{python_logger: "py.warnings"}}, 5_000
          assert warning =~ "UserWarning: deprecated"
          assert {:ok, true} = Snakepit.execute("say", %{text: "plain"}, pool: pool)
          plain = "[#{worker_id} stderr] plain"
          assert_receive {:log, :info, ^plain}, 5_000
          refute_received {:log, :debug, "quiet"}
        end)

      assert log =~ "[warning] careful"
      assert log =~ "[error] it failed\nTraceback"
    end

    test "the :metadata option reaches the tool; bad metadata is refused" do
      {pool, _log} = with_log(fn -> Pools.start!("logging_adapters.LoggingAdapter") end)

      assert {:ok, %{"trace_id" => "t-1", "user" => "ada"}} =
               Snakepit.execute("context_metadata", %{},
                 pool: pool,
                 metadata: [trace_id: "t-1", user: "ada"]
               )

      assert {:ok, %{}} = Snakepit.execute("context_metadata", %{}, pool: pool)

      for bad <- [
            %{a: 1},
            %{"a" => <<255>>},
            %{:a => "x", "a" => "y"},
            Map.new(1..65, &{"k#{&1}", "v"}),
            %{"a" => String.duplicate("x", 4_097)},
            # 12 000 bytes in all, over the 8 KiB of a call's metadata.
            Map.new(1..3, &{"k#{&1}", String.duplicate("x", 4_000)}),
            [a: "1", a: "2"],
            "text",
            [1, 2]
          ] do
        assert {:error, %Snakepit.Error{category: :validation, details: %{option: :metadata}}} =
                 Snakepit.execute("context_metadata", %{}, pool: pool, metadata: bad)
      end
    end

    test "a worker logging in a tight loop is held to its rate, and the drops are reported" do
      capture_log(fn ->
        pool = Pools.start!("logging_adapters.LoggingAdapter")
        assert {:ok, 200_000} = Snakepit.execute("flood", %{count: 200_000}, pool: pool)
        {:ok, [info]} = Pool.worker_info(pool)
        assert info.output_dropped_lines > 100_000
        assert_receive {:log, :warning, "[" <> report}, 5_000
        assert report =~ "of worker output"
      end)
    end
  end

  # worker_info/1 latency and the pool's queue, every 50 ms until flooded.
  defp sample_until_flooded(pool, pool_pid, samples) do
    receive do
      :flooded -> samples
    after
      50 ->
        {:message_queue_len, queue} = Process.info(pool_pid, :message_queue_len)
        {us, {:ok, _}} = :timer.tc(fn -> Pool.worker_info(pool) end)
        sample = %{latency_ms: div(us, 1000), queue: queue}
        sample_until_flooded(pool, pool_pid, [sample | samples])
    end
  end

  # True once an info line matching `pattern` arrives (within 10 s).
  defp await_line(pattern) do
    receive do
      {:log, :info, line} -> line =~ pattern or await_line(pattern)
    after
      10_000 -> false
    end
  end

  # The info lines received so far, in order.
  defp logged_lines(acc \\ []) do
    receive do
      {:log, :info, line} -> logged_lines([line | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
