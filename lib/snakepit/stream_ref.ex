defmodule Snakepit.StreamRef do
  @moduledoc """
  A Python generator or iterator, consumed lazily from Elixir: what a
  universal call returns for a generator, an iterator or an async generator
  (also inside a list or map).

      {:ok, counter} = Snakepit.call("itertools", "count", [1])
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] = Enum.take(counter, 10)
      [11, 12, 13, 14, 15] = Enum.take(counter, 5)

  It is `Enumerable`, single-pass and stateful, like the Python iterator: each
  enumeration continues where the last one stopped, and one that reached the
  end leaves the stream exhausted (enumerating it again gives `[]`). Strings,
  bytes, lists, tuples, dicts, sets and context managers (files) are never
  stream refs. `count/1`, `member?/2` and `slice/1` answer
  `{:error, __MODULE__}`, so `Enum.count/1` consumes the stream.

  Items are fetched in batches of up to `prefetch` (growing from 16 on each
  round trip, so a short `Enum.take/2` pulls few items ahead), not one round
  trip per item. No item is lost or repeated across successive enumerations:
  items fetched ahead stay in the worker until an enumeration takes them.
  Async generators are consumed with `anext` on the worker's event loop.

  An exception raised by the Python iterator raises a `Snakepit.Error` (with
  the Python type and traceback) in the consuming process, after the items
  before it; the stream is then released. A fetch that waits longer than
  `item_timeout` for the next item, or an enumeration that lasts longer than
  `stream_timeout`, raises a `:timeout` error whose `details.timeout` says
  which (`:item_timeout` or `:stream_timeout`); the Python iterator is
  stopped. Set them with the call's options, a profile, or by updating the
  struct (`%{stream | prefetch: 1}`).

  Enumerate a stream ref from one process at a time: items fetched ahead
  for one enumeration are sent again to the next, so two enumerations at
  once may see the same items. If the consuming process dies while a fetch
  runs, the fetch is cancelled and the Python iterator stopped with it.

  Fields, as in the wire format (`"__type__": "stream_ref"`): `ref_id`,
  `session_id`, `pool_name`, `stream_type` (`"generator"`, `"iterator"`,
  `"async_generator"` or `"async_iterator"`), `type_name`, `python_module`,
  `library` (the top-level package of `python_module`) and `exhausted` (a
  struct is a value, so it stays `false` when an enumeration reaches the end:
  enumerating again is how to find out, and gives `[]`); then `worker_id`,
  `worker_uid`, `worker_slot`, which locate the worker holding it. Routing
  and lifetime are those of `Snakepit.Ref`.
  """

  @enforce_keys [:ref_id, :pool_name, :worker_id, :worker_uid, :worker_slot]
  defstruct [
    :ref_id,
    :node,
    :session_id,
    :pool_name,
    :stream_type,
    :type_name,
    :python_module,
    :library,
    :worker_id,
    :worker_uid,
    :worker_slot,
    exhausted: false,
    prefetch: 512,
    item_timeout: :infinity,
    stream_timeout: :infinity
  ]

  @type t :: %__MODULE__{
          ref_id: String.t(),
          session_id: String.t() | nil,
          pool_name: atom(),
          stream_type: String.t(),
          type_name: String.t() | nil,
          python_module: String.t() | nil,
          library: String.t() | nil,
          worker_id: String.t(),
          worker_uid: pos_integer(),
          worker_slot: non_neg_integer(),
          exhausted: boolean(),
          prefetch: pos_integer(),
          item_timeout: timeout(),
          stream_timeout: timeout()
        }

  @doc """
  The wire format of `stream`: a map with string keys as the worker sends it
  (`"__type__" => "stream_ref"`, `"__schema__" => 1`, `"id"`, ...).
  """
  @spec to_wire_format(t()) :: map()
  def to_wire_format(%__MODULE__{} = stream) do
    %{
      "__type__" => "stream_ref",
      "__schema__" => 1,
      "id" => stream.ref_id,
      "session_id" => stream.session_id,
      "pool_name" => Atom.to_string(stream.pool_name),
      "stream_type" => stream.stream_type,
      "type_name" => stream.type_name,
      "python_module" => stream.python_module
    }
  end

  defimpl Inspect do
    def inspect(stream, _opts) do
      "#Snakepit.StreamRef<#{stream.stream_type} #{stream.python_module}.#{stream.type_name} on #{stream.worker_id}>"
    end
  end

  defimpl Enumerable do
    def count(_stream), do: {:error, __MODULE__}
    def member?(_stream, _value), do: {:error, __MODULE__}
    def slice(_stream), do: {:error, __MODULE__}

    def reduce(stream, acc, fun),
      do: stream |> Snakepit.Objects.Iteration.stream() |> Enumerable.reduce(acc, fun)
  end
end
