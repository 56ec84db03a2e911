defmodule Snakepit.Objects do
  @moduledoc false
  # The universal call: `Snakepit.call/4`, `attr/3`, `method/4`, `release/1`
  # and the operations refs are enumerated with. Each operation is a unary
  # call of a reserved tool (`snakepit.call`, `snakepit.next`, ...; see
  # `snakepit_bridge.universal`) through the usual checkout, deadlines and
  # cancellation. Refs travel as `%{"__snakepit_ref__" => id}` in arguments
  # and as tagged maps (`"__type__"`, `"__schema__"`) in results; this module
  # converts both ways and routes calls on refs to the refs' worker.

  alias Snakepit.{Call, Error, Ref, StreamRef, Telemetry, Worker}
  alias Snakepit.Cluster.Route
  alias Snakepit.Objects.Keeper
  alias Snakepit.Pool.Checkout

  @ref_key "__snakepit_ref__"
  @max_depth Snakepit.Limits.max_depth()

  @typedoc "Where an operation runs: a node, a pool, and the worker its refs pin it to."
  @type route :: %{
          node: node(),
          pool: atom(),
          worker: {pos_integer(), non_neg_integer()} | nil,
          session_id: String.t()
        }

  @typedoc "A module name or a ref: what `attr` and `call` act on."
  @type target :: String.t() | Ref.t() | StreamRef.t()

  # -- the public operations (opts validated by `Snakepit`) --

  @doc false
  @spec call(target(), String.t(), :call | :attr, list(), map()) ::
          {:ok, term()} | {:error, Error.t()}
  def call(target, path, action, args, opts) do
    with {:ok, target_wire, target_pin} <- target(target),
         {:ok, args_wire, pins} <- encode_args(args),
         {:ok, kwargs_wire, more_pins} <- encode_args(opts.kwargs),
         {:ok, route} <- route(opts, [target_pin | pins ++ more_pins]) do
      request = %{
        "scope" => scope(route.session_id),
        "target" => target_wire,
        "path" => path,
        "action" => Atom.to_string(action),
        "args" => args_wire,
        "kwargs" => kwargs_wire,
        "has_refs" => route.worker != nil
      }

      metadata = %{
        pool: route.pool,
        module: target_name(target),
        function: path,
        action: action,
        session_id: route.session_id,
        node: route.node,
        worker_id: nil
      }

      Telemetry.span([:snakepit, :universal_call], metadata, fn ->
        # Tracked before the call (for this process): refs it makes are
        # released with their scope even when its answer never arrives.
        case run(route, "snakepit.call", request, opts, opts.timeout, self()) do
          {:ok, answer, worker} ->
            {decode_answer(answer, worker, Map.put(opts, :node, route.node)),
             %{worker_id: worker.id}}

          {:error, _} = error ->
            {error, %{}}
        end
      end)
    end
  end

  @doc false
  @spec release(Ref.t() | StreamRef.t()) :: :ok | {:error, Error.t()}
  def release(%Ref{id: id} = ref), do: release_ids(ref, [id])
  def release(%StreamRef{ref_id: id} = ref), do: release_ids(ref, [id])

  @doc false
  # Releases objects of the worker holding `ref`.
  @spec release_ids(Ref.t() | StreamRef.t(), [String.t()]) :: :ok | {:error, Error.t()}
  def release_ids(ref, ids) do
    {_id, route} = ref_route(ref)
    release_on(route, %{"refs" => ids})
  end

  @doc false
  # Releases every object of `scope` on a worker (the keeper does this when a
  # session ends or a process exits).
  @spec release_scope(atom(), {pos_integer(), non_neg_integer()}, String.t()) ::
          :ok | {:error, Error.t()}
  def release_scope(pool, pin, scope),
    do: release_on(%{node: node(), pool: pool, worker: pin, session_id: ""}, %{"scope" => scope})

  defp release_on(route, request) do
    case run(route, "snakepit.release", request, %{}, 5_000) do
      {:ok, _answer, _worker} -> :ok
      # The worker is gone, and the objects with it.
      {:error, %Error{details: %{reason: :ref_lost}}} -> :ok
      {:error, _} = error -> error
    end
  end

  @doc false
  # `len()` of a ref's object: `{:ok, n}`, `{:ok, nil}` without one.
  @spec length(Ref.t()) :: {:ok, non_neg_integer() | nil} | {:error, Error.t()}
  def length(%Ref{} = ref) do
    {id, route} = ref_route(ref)

    with {:ok, %{"len" => length}, _worker} <-
           run(route, "snakepit.len", %{"ref" => id}, %{}, per_fetch(ref.item_timeout)) do
      {:ok, length}
    end
  end

  @doc false
  # Live refs of the worker holding `ref` (and of `ref`'s scope): for tests
  # and diagnostics.
  @spec live_refs(Ref.t() | StreamRef.t()) :: {:ok, map()} | {:error, Error.t()}
  def live_refs(ref) do
    {_id, route} = ref_route(ref)

    with {:ok, answer, _worker} <-
           run(route, "snakepit.refs", %{"scope" => scope(route.session_id)}, %{}, 5_000) do
      {:ok, answer}
    end
  end

  @doc false
  # One fetch of an enumeration (see `Snakepit.Objects.Iteration`).
  @spec fetch(Ref.t() | StreamRef.t(), map(), timeout()) ::
          {:ok, map(), Worker.t()} | {:error, Error.t()}
  def fetch(ref, request, timeout) do
    {_id, route} = ref_route(ref)
    run(route, "snakepit.next", request, %{}, timeout)
  end

  @doc false
  # Turns the tagged maps of a decoded answer into refs and binaries.
  @spec decode(term(), Worker.t(), map()) :: term()
  def decode(value, worker, opts), do: from_wire(value, worker, opts)

  defp target_name(module) when is_binary(module), do: module
  defp target_name(%Ref{python_module: module, type_name: type}), do: "#{module}.#{type}"
  defp target_name(%StreamRef{python_module: module, type_name: type}), do: "#{module}.#{type}"

  # -- routing --

  defp target(module) when is_binary(module) do
    if module =~ ~r/^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/,
      do: {:ok, %{"module" => module}, nil},
      else: invalid("the module must be a dotted Python module name, got: #{inspect(module)}")
  end

  defp target(%Ref{id: id} = ref), do: {:ok, %{"ref" => id}, pin(ref)}
  defp target(%StreamRef{ref_id: id} = ref), do: {:ok, %{"ref" => id}, pin(ref)}

  defp target(other),
    do: invalid("the target must be a module name or a ref, got: #{inspect(other, limit: 5)}")

  defp pin(%Ref{} = ref),
    do: {ref.node, ref.pool, ref.worker_uid, ref.worker_slot, ref.session_id}

  defp pin(%StreamRef{} = ref),
    do: {ref.node, ref.pool_name, ref.worker_uid, ref.worker_slot, ref.session_id}

  defp ref_route(%Ref{id: id} = ref), do: {id, pinned_route(pin(ref))}
  defp ref_route(%StreamRef{ref_id: id} = ref), do: {id, pinned_route(pin(ref))}

  defp pinned_route({node, pool, uid, slot, session_id}),
    do: %{node: node, pool: pool, worker: {uid, slot}, session_id: session_id || ""}

  # A call runs where its refs are (all on one worker of the call's pool),
  # else on a worker of the pool placed as any call (the session's, in a
  # session; see `Snakepit.Cluster.Route`). Its session is the option's,
  # else its refs'.
  defp route(opts, pins) do
    case pins
         |> Enum.reject(&is_nil/1)
         |> Enum.uniq_by(fn {n, p, uid, _, _} -> {n, p, uid} end) do
      [] ->
        with {:ok, node} <- place(opts) do
          {:ok, %{node: node, pool: opts.pool, worker: nil, session_id: opts.session_id}}
        end

      [{node, pool, uid, slot, session_id}] ->
        cond do
          Map.get(opts, :pool_given?, false) and pool != opts.pool ->
            {:error,
             Error.new(
               :validation,
               "the call names pool #{inspect(opts.pool)} but its refs live in pool #{inspect(pool)}",
               %{reason: :ref_pool_mismatch, pool: opts.pool, ref_pool: pool}
             )}

          true ->
            session = if opts.session_id == "", do: session_id || "", else: opts.session_id
            {:ok, %{node: node, pool: pool, worker: {uid, slot}, session_id: session}}
        end

      several ->
        {:error,
         Error.new(
           :validation,
           "the refs of one call must live on one worker; these live on #{Kernel.length(several)}",
           %{reason: :refs_on_different_workers}
         )}
    end
  end

  defp place(opts) do
    case Route.place(opts) do
      :local -> {:ok, node()}
      {:remote, node} -> {:ok, node}
      {:error, _} = error -> error
    end
  end

  # Refs made in a session live with the session; others with the process
  # that made them.
  defp scope(session_id), do: scope(session_id, self())

  @doc false
  # The scope of refs made by `pid` in session `session_id` (`""` for none).
  @spec scope(String.t(), pid()) :: String.t()
  def scope("", pid) do
    # The same text on every node: `pid_to_list/1` starts with a number that
    # says which node the pid is of, as seen from the node that prints it.
    "<" <> printed = pid |> :erlang.pid_to_list() |> to_string()
    [_node_index, id, serial] = printed |> String.trim_trailing(">") |> String.split(".")
    "process:#{id}.#{serial}@#{node(pid)}"
  end

  def scope(session_id, _pid), do: "session:" <> session_id

  # Runs one operation on the route's node; `{:ok, answer, worker}`. With
  # `owner`, the refs the operation makes are released when that process
  # exits (outside a session).
  defp run(route, tool, request, opts, timeout, owner \\ nil) do
    settings = %{
      affinity: Map.get(opts, :affinity),
      checkout_timeout: Map.get(opts, :checkout_timeout),
      metadata: Map.get(opts, :metadata, %{})
    }

    if route.node == node() do
      run_here(route, tool, request, settings, timeout, owner)
    else
      Route.run(
        route.node,
        __MODULE__,
        :run_here,
        [route, tool, request, settings, timeout, owner],
        timeout
      )
    end
  end

  @doc false
  # `run/6` on the route's node.
  @spec run_here(route(), String.t(), map(), map(), timeout(), pid() | nil) ::
          {:ok, term(), Worker.t()} | {:error, Error.t()}
  def run_here(route, tool, request, settings, timeout, owner) do
    checkout = %{
      affinity: settings.affinity,
      checkout_timeout: settings.checkout_timeout,
      session_id: route.session_id,
      worker: route.worker
    }

    call_opts = %{
      binary_parameters: %{},
      session_id: route.session_id,
      metadata: settings.metadata
    }

    with :ok <- renew_session(route) do
      checked_out(route, tool, request, checkout, call_opts, timeout, owner)
    end
  end

  # A call in a session creates or renews it in this node's store, as any
  # call does; using a session's refs renews it (and never brings back one
  # that has ended).
  defp renew_session(%{session_id: ""}), do: :ok
  defp renew_session(%{session_id: id, worker: nil}), do: Snakepit.Session.ensure(id)

  defp renew_session(%{session_id: id}) do
    _ = Snakepit.Session.touch(id)
    :ok
  end

  defp checked_out(route, tool, request, checkout, call_opts, timeout, owner) do
    Checkout.with_worker(route.pool, checkout, deadline(timeout), fn worker, remaining ->
      if owner, do: Keeper.track(route.session_id, worker, owner)

      case Call.unary(worker, tool, request, call_opts, remaining) do
        {:ok, answer} -> {:ok, answer, worker}
        {:error, error} -> {:error, error}
      end
    end)
    |> explain(route)
  end

  defp explain({:error, %Error{details: %{reason: :session_worker_unavailable}}}, %{worker: pin})
       when pin != nil do
    {:error,
     Error.new(
       :validation,
       "the ref's worker is gone (stopped, restarted or recycled) and its Python objects with it",
       %{reason: :ref_lost}
     )}
  end

  defp explain(result, _route), do: result

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout

  defp per_fetch(:infinity), do: 30_000
  defp per_fetch(timeout), do: timeout

  # -- results --

  defp decode_answer(binary, _worker, _opts) when is_binary(binary), do: {:ok, binary}

  defp decode_answer(%{"value" => value, "tagged" => 0}, _worker, _opts), do: {:ok, value}

  defp decode_answer(%{"value" => value}, worker, opts),
    do: {:ok, from_wire(value, worker, opts)}

  defp from_wire(%{"__type__" => type, "__schema__" => 1} = tagged, worker, opts) do
    case type do
      "ref" -> ref(tagged, worker, opts)
      "stream_ref" -> stream_ref(tagged, worker, opts)
      "bytes" -> Base.decode64!(tagged["base64"])
      _ -> map_from_wire(tagged, worker, opts)
    end
  end

  defp from_wire(map, worker, opts) when is_map(map), do: map_from_wire(map, worker, opts)

  defp from_wire(list, worker, opts) when is_list(list),
    do: Enum.map(list, &from_wire(&1, worker, opts))

  defp from_wire(value, _worker, _opts), do: value

  defp map_from_wire(map, worker, opts),
    do: Map.new(map, fn {k, v} -> {k, from_wire(v, worker, opts)} end)

  defp ref(tagged, worker, opts) do
    %Ref{
      id: tagged["id"],
      node: Map.get(opts, :node, node()),
      pool: worker.pool,
      worker_id: worker.id,
      worker_uid: worker.uid,
      worker_slot: worker.slot,
      session_id: tagged["session_id"],
      type_name: tagged["type_name"],
      python_module: tagged["python_module"],
      repr: tagged["repr"],
      prefetch: Map.get(opts, :prefetch, 512),
      item_timeout: Map.get(opts, :item_timeout, :infinity),
      stream_timeout: Map.get(opts, :stream_timeout, :infinity)
    }
  end

  defp stream_ref(tagged, worker, opts) do
    module = tagged["python_module"]

    %StreamRef{
      ref_id: tagged["id"],
      node: Map.get(opts, :node, node()),
      session_id: tagged["session_id"],
      pool_name: worker.pool,
      stream_type: tagged["stream_type"],
      type_name: tagged["type_name"],
      python_module: module,
      library: module && module |> String.split(".") |> hd(),
      worker_id: worker.id,
      worker_uid: worker.uid,
      worker_slot: worker.slot,
      prefetch: Map.get(opts, :prefetch, 512),
      item_timeout: Map.get(opts, :item_timeout, :infinity),
      stream_timeout: Map.get(opts, :stream_timeout, :infinity)
    }
  end

  # -- arguments --

  # Replaces refs with their wire form; `{:ok, wire, pins}`.
  defp encode_args(args) do
    {wire, pins} = to_wire(args, [], 0)
    {:ok, wire, pins}
  end

  defp to_wire(%Ref{id: id} = ref, pins, _depth), do: {%{@ref_key => id}, [pin(ref) | pins]}

  defp to_wire(%StreamRef{ref_id: id} = ref, pins, _depth),
    do: {%{@ref_key => id}, [pin(ref) | pins]}

  # Past the depth the codec refuses, nothing needs converting.
  defp to_wire(value, pins, depth) when depth > @max_depth, do: {value, pins}

  defp to_wire(list, pins, depth) when is_list(list), do: list_to_wire(list, pins, depth, [])

  defp to_wire(map, pins, depth) when is_map(map) and not is_struct(map) do
    {pairs, pins} =
      Enum.map_reduce(map, pins, fn {k, v}, pins ->
        {v, pins} = to_wire(v, pins, depth + 1)
        {{k, v}, pins}
      end)

    {Map.new(pairs), pins}
  end

  defp to_wire(tuple, pins, depth) when is_tuple(tuple) do
    {items, pins} = list_to_wire(Tuple.to_list(tuple), pins, depth, [])
    {List.to_tuple(items), pins}
  end

  defp to_wire(value, pins, _depth), do: {value, pins}

  # Improper tails are kept as they are: the codec refuses them.
  defp list_to_wire([head | tail], pins, depth, acc) do
    {head, pins} = to_wire(head, pins, depth + 1)
    list_to_wire(tail, pins, depth, [head | acc])
  end

  defp list_to_wire([], pins, _depth, acc), do: {Enum.reverse(acc), pins}
  defp list_to_wire(tail, pins, _depth, acc), do: {:lists.reverse(acc, tail), pins}

  defp invalid(message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_argument})}
end
