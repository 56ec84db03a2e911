# Any Python function from Elixir, without an adapter tool: values, refs to
# objects kept in the worker, and generators consumed lazily as streams.
#
#     mix run examples/universal_call.exs
#
# Starts a pool whose workers can import examples/python/datasets.py.

{:ok, _} =
  Snakepit.Pool.start_link(
    name: :universal_example,
    size: 1,
    python_path: [Path.join(__DIR__, "python")]
  )

opts = [pool: :universal_example]

{:ok, root} = Snakepit.call("math", "sqrt", [16], opts)
IO.puts("math.sqrt(16) = #{root}")

{:ok, json} = Snakepit.call("json", "dumps", [%{a: 1}], [kwargs: %{indent: 2}] ++ opts)
IO.puts("json.dumps(..., indent=2) =\n#{json}")

{:ok, counter} = Snakepit.call("itertools", "count", [1], opts)
IO.puts("itertools.count(1): #{inspect(counter)}")
IO.puts("  first ten: #{inspect(Enum.take(counter, 10))}")
IO.puts("  next five: #{inspect(Enum.take(counter, 5))}")

{:ok, range} = Snakepit.call("builtins", "range", [100], opts)
{:ok, list} = Snakepit.call("builtins", "list", [range], opts)

IO.puts(
  "range(100): #{inspect(range)}; list(range) has #{length(list)} items, sum #{Enum.sum(range)}"
)

{:ok, mean} = Snakepit.call("datasets", "RunningMean", [], opts)
for value <- [2, 4, 9], do: {:ok, _} = Snakepit.method(mean, "add", [value])
{:ok, count} = Snakepit.attr(mean, "count")
{:ok, average} = Snakepit.method(mean, "add", [5])
IO.puts("#{inspect(mean)}: #{count + 1} values, mean #{average}")
:ok = Snakepit.release(mean)

{:ok, rows} = Snakepit.call("datasets", "load_large_dataset", [10_000], opts)

batches =
  rows
  |> Stream.chunk_every(1_000)
  |> Stream.map(fn batch -> Enum.sum(Enum.map(batch, & &1["value"])) end)
  |> Enum.to_list()

IO.puts(
  "load_large_dataset: #{length(batches)} batches of 1000 rows, last sum #{List.last(batches)}"
)

{:error, error} = Snakepit.call("no_such_module", "f", [], opts)
IO.puts("a missing module: #{error.python_type}")

Snakepit.Pool.stop(:universal_example)
IO.puts("Done.")
