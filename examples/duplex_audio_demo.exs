# Streams audio frames from Elixir through a Python tool and back, live.
#
#     mix run examples/duplex_audio_demo.exs
#
# A 440 Hz sine wave is cut into 20 ms frames of 16-bit PCM (16 kHz) and sent,
# one frame every 20 ms as a microphone would, to the showcase tool
# `frame_rms`, which yields each frame's RMS level as soon as it has it. Each
# line shows the frame, its level, and the round trip: from the moment the
# frame was taken from the input stream to the moment its result reached Elixir.

rate = 16_000
frame_ms = 20
samples_per_frame = div(rate * frame_ms, 1000)
frames = 50

frame = fn index ->
  # The amplitude rises and falls so that the levels change frame by frame.
  amplitude = 0.2 + 0.7 * abs(:math.sin(index / 8))

  for n <- 0..(samples_per_frame - 1), into: <<>> do
    t = (index * samples_per_frame + n) / rate
    sample = round(amplitude * 32_767 * :math.sin(2 * :math.pi() * 440 * t))
    <<sample::little-signed-16>>
  end
end

sent_at = :ets.new(:sent_at, [:public])

inputs =
  Stream.map(0..(frames - 1), fn index ->
    if index > 0, do: Process.sleep(frame_ms)
    :ets.insert(sent_at, {index, System.monotonic_time(:microsecond)})
    frame.(index)
  end)

IO.puts("Streaming #{frames} frames of #{frame_ms} ms through Python (frame_rms)...\n")

:ok =
  Snakepit.execute_duplex("frame_rms", %{sample_width: 2}, inputs, fn
    %{"frame" => index, "rms" => rms} ->
      [{^index, sent}] = :ets.lookup(sent_at, index)
      round_trip = (System.monotonic_time(:microsecond) - sent) / 1000
      level = String.duplicate("#", round(rms / 32_767 * 40))

      IO.puts(
        "frame #{String.pad_leading(Integer.to_string(index), 2)}  " <>
          "rms #{:erlang.float_to_binary(rms / 32_767, decimals: 3)}  " <>
          "round trip #{:erlang.float_to_binary(round_trip, decimals: 2)} ms  #{level}"
      )

    %{"is_final" => true} ->
      IO.puts("\nDone.")
  end)
