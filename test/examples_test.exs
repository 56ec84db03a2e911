defmodule Snakepit.ExamplesTest do
  # The examples start pools with fixed names, so they run one at a time.
  use ExUnit.Case, async: false

  import ExUnit.CaptureIO

  @examples Path.expand("../examples", __DIR__)

  defp run_example(name) do
    output = capture_io(fn -> Code.eval_file(Path.join(@examples, name)) end)
    Snakepit.Pool.stop(:ml_examples)
    output
  end

  @tag timeout: 60_000
  test "stream_progress_demo prints each chunk as it arrives" do
    output = run_example("stream_progress_demo.exs")
    assert output =~ "Processing step 1/5"
    assert output =~ "Processing step 5/5 (100%)"
    assert output =~ ~r/Done: worker default-\d/
  end

  test "duplex_audio_demo prints a level and a round trip per frame" do
    output = run_example("duplex_audio_demo.exs")

    assert length(Regex.scan(~r/frame +\d+  rms \d\.\d{3}  round trip \d+\.\d\d ms/, output)) ==
             50

    assert output =~ "Done."
  end

  test "batch_inference prints a result per item and a summary" do
    output = run_example("batch_inference.exs")
    assert length(Regex.scan(~r/image_00\d\.jpg: \w+ \(\d+% confidence\)/, output)) == 5
    assert output =~ "Batch complete: 5 items"
  end

  @tag timeout: 120_000
  test "reactive_node runs the Python reactive example against this node" do
    output = capture_io(fn -> Code.eval_file(Path.join(@examples, "reactive_node.exs")) end)
    assert output =~ "=== Basic watching ==="
    assert output =~ ~r/temperature 29\.5 -> 31\.0 C .*by python/
    assert output =~ "the last one final"
    assert output =~ "optimal conditions reached"
    assert output =~ "asyncio.TimeoutError"
    assert output =~ ~r/status: 'elixir tick \d+' \(by elixir/
    assert output =~ "4 updates from Elixir, 1 error(s) reported"
    assert output =~ "Reactive example done."

    assert output =~
             ~r/\[elixir\] wrote status \d+ times; saw [1-9]\d* temperature changes made by Python/
  end

  test "universal_call calls plain Python: values, refs and lazy streams" do
    output = run_example("universal_call.exs")
    assert output =~ "math.sqrt(16) = 4.0"
    assert output =~ "first ten: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    assert output =~ "next five: [11, 12, 13, 14, 15]"
    assert output =~ "list(range) has 100 items, sum 4950"
    assert output =~ ~r/#Snakepit.Ref<datasets.RunningMean .*: 4 values, mean 5.0/
    assert output =~ "load_large_dataset: 10 batches of 1000 rows, last sum 90323833500"
    assert output =~ "a missing module: ModuleNotFoundError"
    assert output =~ "Done."
  end

  # What examples/python_client/run.exs does, with this test node.
  defp run_python_client(script) do
    {output, 0} =
      System.cmd("python3", [Path.join(@examples, "python_client/" <> script)],
        env: [
          {"SNAKEPIT_ADDRESS", Snakepit.Bridge.address()},
          {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
          {"PYTHONPATH", Snakepit.Python.package_dir()}
        ],
        stderr_to_stdout: true
      )

    output
  end

  test "python_client/streaming_audio streams frames through a duplex tool" do
    output = run_python_client("streaming_audio.py")
    levels = Regex.scan(~r/frame +\d+  rms +(\d+\.\d)  round trip \d+\.\d\d ms/, output)
    assert length(levels) == 50, output
    # The volume rises frame by frame, and so does the level.
    rms = Enum.map(levels, fn [_, level] -> String.to_float(level) end)
    assert rms == Enum.sort(rms)
    assert output =~ ~r/50 frames, median round trip \d+\.\d\d ms/
  end

  test "python_client/simple_execution runs tools from outside the pools" do
    output = run_python_client("simple_execution.py")

    assert output =~ "node protocol 1"
    assert output =~ ~r/pool default: 2 workers, \d+ tools \(\d+ streaming\)/
    assert output =~ ~r/add\(5, 3\) = 8 on default-\d in \d+ ms/
    assert output =~ "'message': 'Processing step 3/3'"
    assert output =~ "error branch: python ValueError: ValueError: bad input"
    assert output =~ ~r/50 calls: p50 \d+\.\d\d ms/
  end

  test "training_progress prints every epoch, then the model" do
    output = run_example("training_progress.exs")
    assert output =~ "Epoch 1: loss="
    assert output =~ "Epoch 12: loss="
    assert output =~ "Training complete!"
  end
end
