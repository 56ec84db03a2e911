# Streams progress updates from a Python generator into an Elixir callback.
#
#     mix run examples/stream_progress_demo.exs
#
# The `stream_progress` tool of the bundled showcase adapter yields one chunk
# every `delay_ms`; each chunk is printed the moment it arrives.

steps = 5
delay_ms = 750
started = System.monotonic_time(:millisecond)

IO.puts("Streaming #{steps} progress updates from Python (one every #{delay_ms} ms)...\n")

:ok =
  Snakepit.execute_stream("stream_progress", %{steps: steps, delay_ms: delay_ms}, fn chunk ->
    elapsed = (System.monotonic_time(:millisecond) - started) / 1000
    at = :erlang.float_to_binary(elapsed, decimals: 3)
    bar = String.duplicate("#", chunk["step"]) |> String.pad_trailing(steps)

    IO.puts("[+#{at}s] [#{bar}] #{chunk["message"]} (#{round(chunk["progress"])}%)")
    IO.puts("           chunk: #{inspect(Map.delete(chunk, "_metadata"))}")

    if chunk["is_final"] do
      meta = chunk["_metadata"]
      IO.puts("\nDone: worker #{meta["worker_id"]}, #{meta["execution_time_ms"]} ms in Python.")
    end
  end)
