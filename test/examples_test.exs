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

  test "training_progress prints every epoch, then the model" do
    output = run_example("training_progress.exs")
    assert output =~ "Epoch 1: loss="
    assert output =~ "Epoch 12: loss="
    assert output =~ "Training complete!"
  end
end
