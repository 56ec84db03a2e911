defmodule Snakepit.Ref do
  @moduledoc """
  A Python object that stays in the worker that made it: what
  `Snakepit.call/4`, `Snakepit.attr/3` and `Snakepit.method/4` return for
  values that have no plain form (a model, a DataFrame, a `range`, a module).

      {:ok, df} = Snakepit.call("pandas", "DataFrame", [%{"a" => [1, 2, 3]}])
      {:ok, 6} = Snakepit.method(df, "a.sum", [])
      :ok = Snakepit.release(df)

  Pass a ref back in the arguments of a call (anywhere in a list or map) and
  Python gets the object again. Calls on a ref, and calls whose arguments
  hold refs, run on the ref's worker; if that worker is gone (stopped,
  restarted, recycled) they fail with reason `:ref_lost`, never on another
  object.

  A ref made in a session lives until the session ends (calls on its refs
  keep the session alive); one made outside a session lives until the
  process that made it exits. Either is released earlier by
  `Snakepit.release/1`, and by the pool's `:ref_ttl` when unused (not while
  a call uses it). Using a released ref is a `:validation` error with reason
  `:ref_released`; a worker remembers its last 4 096 releases, and an older
  one is `:ref_lost` like a ref it never held.

  A ref is `Enumerable` when its object is iterable: each enumeration starts
  a fresh `iter()` on the object, so a `range` can be enumerated many times,
  and `Enum.count/1` asks Python for `len()` when the object has one. Items
  are fetched in batches (see `Snakepit.StreamRef`).

  Fields: `id`; `pool`; `worker_id` (the worker holding the object);
  `session_id` (`nil` outside a session); `type_name` and `python_module`
  (the object's type); `repr` (its `repr()`, cut at 200 characters);
  `prefetch`, `item_timeout` and `stream_timeout` (how enumerations fetch;
  see `Snakepit.StreamRef`). `worker_uid` and `worker_slot` locate the
  worker process.
  """

  @enforce_keys [:id, :pool, :worker_id, :worker_uid, :worker_slot]
  defstruct [
    :id,
    :node,
    :pool,
    :worker_id,
    :worker_uid,
    :worker_slot,
    :session_id,
    :type_name,
    :python_module,
    :repr,
    prefetch: 512,
    item_timeout: :infinity,
    stream_timeout: :infinity
  ]

  @type t :: %__MODULE__{
          id: String.t(),
          pool: atom(),
          worker_id: String.t(),
          worker_uid: pos_integer(),
          worker_slot: non_neg_integer(),
          session_id: String.t() | nil,
          type_name: String.t() | nil,
          python_module: String.t() | nil,
          repr: String.t() | nil,
          prefetch: pos_integer(),
          item_timeout: timeout(),
          stream_timeout: timeout()
        }

  defimpl Inspect do
    def inspect(ref, _opts) do
      type = Enum.join(Enum.reject([ref.python_module, ref.type_name], &(&1 in [nil, ""])), ".")
      repr = ref.repr || ""
      short = if String.length(repr) > 60, do: String.slice(repr, 0, 59) <> "…", else: repr
      "#Snakepit.Ref<#{type} #{Kernel.inspect(short)} on #{ref.worker_id}>"
    end
  end

  defimpl Enumerable do
    def count(ref) do
      case Snakepit.Objects.length(ref) do
        {:ok, length} when is_integer(length) -> {:ok, length}
        _ -> {:error, __MODULE__}
      end
    end

    def member?(_ref, _value), do: {:error, __MODULE__}
    def slice(_ref), do: {:error, __MODULE__}

    def reduce(ref, acc, fun),
      do: ref |> Snakepit.Objects.Iteration.stream() |> Enumerable.reduce(acc, fun)
  end
end
