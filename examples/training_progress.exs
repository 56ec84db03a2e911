# Training with a progress update per epoch.
#
#     mix run examples/training_progress.exs
#
# Starts a pool of the example adapter in examples/python/ml_examples.py.

{:ok, _} =
  Snakepit.Pool.start_link(
    name: :ml_examples,
    size: 1,
    adapter: "ml_examples.MLExamplesAdapter",
    python_path: [Path.join(__DIR__, "python")]
  )

:ok =
  Snakepit.execute_stream(
    "train_model",
    %{epochs: 12},
    fn chunk ->
      case chunk["type"] do
        "progress" ->
          bar = String.duplicate("#", round(chunk["accuracy"] * 30))

          IO.puts(
            "Epoch #{chunk["epoch"]}: loss=#{chunk["loss"]} accuracy=#{chunk["accuracy"]} #{bar}"
          )

        "complete" ->
          IO.puts("Training complete! weights=#{inspect(chunk["weights"])} bias=#{chunk["bias"]}")
      end
    end,
    pool: :ml_examples
  )
