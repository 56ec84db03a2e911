# Batch inference with a result per item as soon as it is ready, then a summary.
#
#     mix run examples/batch_inference.exs
#
# Starts a pool of the example adapter in examples/python/ml_examples.py.

{:ok, _} =
  Snakepit.Pool.start_link(
    name: :ml_examples,
    size: 1,
    adapter: "ml_examples.MLExamplesAdapter",
    python_path: [Path.join(__DIR__, "python")]
  )

items = ["image_001.jpg", "image_002.jpg", "image_003.jpg", "image_004.jpg", "image_005.jpg"]

:ok =
  Snakepit.execute_stream(
    "batch_inference",
    %{batch_items: items},
    fn
      %{"is_final" => true} = summary ->
        IO.puts("Batch complete: #{summary["total_processed"]} items in #{summary["seconds"]} s")
        IO.puts("Predictions: #{inspect(summary["predictions"])}")

      chunk ->
        IO.puts("#{chunk["item"]}: #{chunk["prediction"]} (#{chunk["confidence"]}% confidence)")
    end,
    pool: :ml_examples
  )
