defmodule Snakepit.Call do
  @moduledoc false
  # The hot path: runs in the caller's process. The NIF answers with messages
  # tagged by a fresh reference; nothing here goes through a GenServer.
  # Each NIF entry point takes one request map, built here in one go (its
  # keys are the fields of `CallRequest` in native/snakepit_nif/src/call.rs,
  # plus `StreamOptions` for streams and `DuplexInputs` for duplex calls).

  alias Snakepit.{Error, Native, Telemetry, Worker}
  alias Snakepit.Call.Feeder
  alias Snakepit.Cluster.Route

  # Chunks the NIF may send ahead of the callback.
  @window 32
  # Extra wait beyond the NIF's own deadline, in case its timeout message is
  # late; the NIF's timeout is the one that normally fires.
  @margin 1_000

  @typedoc """
  What a unary call takes besides its tool and arguments: the call options
  `:binary_parameters` (raw parameters, by name), `:session_id` (`""` for
  none) and, optionally, `:metadata` (a map of strings, for the tool's
  session context). Other keys are ignored.
  """
  @type call_opts :: %{
          required(:binary_parameters) => map(),
          required(:session_id) => String.t(),
          optional(atom()) => term()
        }

  @spec unary(Worker.t(), String.t(), term(), call_opts(), timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def unary(%Worker{} = worker, command, args, opts, timeout) do
    Telemetry.span([:snakepit, :call], span_metadata(worker, command, opts), fn ->
      ref = make_ref()

      result =
        worker
        |> call_request(ref, command, args, opts, timeout)
        |> Native.call_unary()
        |> await(ref, worker, timeout)

      {result, %{}}
    end)
  end

  defp span_metadata(worker, command, opts),
    do: span_metadata(worker.pool, command, worker.id, opts.session_id, node())

  @doc false
  # The metadata of a call's, stream's or duplex call's span.
  @spec span_metadata(atom(), String.t(), String.t() | nil, String.t(), node()) :: map()
  def span_metadata(pool, tool, worker_id, session_id, node),
    do: %{pool: pool, tool: tool, worker_id: worker_id, session_id: session_id, node: node}

  @spec describe(Worker.t(), timeout()) :: {:ok, map()} | {:error, Error.t()}
  def describe(%Worker{} = worker, timeout) do
    ref = make_ref()

    worker.resource
    |> Native.worker_describe(self(), ref, ms(timeout))
    |> await(ref, worker, timeout)
  end

  defp await({:ok, call}, ref, worker, timeout) do
    result =
      receive do
        {^ref, {:ok, value}} -> {:ok, value}
        {^ref, {:error, failure}} -> {:error, Error.from_native(failure, %{worker_id: worker.id})}
      after
        backstop(timeout) -> {:error, timeout_error(timeout, worker)}
      end

    # Also keeps the call resource alive (and so the call running) until here.
    Native.call_cancel(call)
    result
  end

  defp await({:error, failure}, _ref, _worker, _timeout), do: {:error, Error.from_native(failure)}

  @typedoc """
  Stream settings: those of `t:call_opts/0`, `:timeout` for the whole stream,
  `:idle_timeout` between chunks (`:infinity` for none) and `:raw_binaries`
  (bytes under `"data"` instead of base64 under `"raw_data_base64"`).
  """
  @type stream_opts :: %{
          required(:binary_parameters) => map(),
          required(:session_id) => String.t(),
          required(:timeout) => timeout(),
          required(:idle_timeout) => timeout(),
          required(:raw_binaries) => boolean(),
          optional(atom()) => term()
        }

  @doc false
  # The stream settings of validated call options, `timeout` left.
  @spec stream_opts(map(), timeout()) :: stream_opts()
  def stream_opts(opts, timeout) do
    %{
      binary_parameters: opts.binary_parameters,
      session_id: opts.session_id,
      metadata: opts.metadata,
      timeout: timeout,
      idle_timeout: opts.idle_timeout,
      raw_binaries: opts.raw_binaries
    }
  end

  @spec stream(Worker.t(), String.t(), term(), (map() -> term()), stream_opts()) ::
          :ok | {:error, Error.t()}
  def stream(%Worker{} = worker, command, args, callback, opts) do
    Telemetry.span([:snakepit, :stream], span_metadata(worker, command, opts), fn ->
      ref = make_ref()

      worker
      |> stream_request(ref, command, args, opts)
      |> Native.stream_open()
      |> run_stream(ref, callback, worker.id, opts)
      |> delivered()
    end)
  end

  # Inputs travel through a channel of this many places in the NIF.
  @input_window 8

  @doc false
  @spec input_window() :: pos_integer()
  def input_window, do: @input_window

  @spec duplex(Worker.t(), String.t(), term(), Enumerable.t(), (map() -> term()), stream_opts()) ::
          :ok | {:error, Error.t()}
  def duplex(%Worker{} = worker, command, args, inputs, callback, opts) do
    Telemetry.span([:snakepit, :duplex], span_metadata(worker, command, opts), fn ->
      ref = make_ref()
      feeder = Feeder.start(self(), ref, inputs, @input_window)
      opened = duplex_open(worker, ref, command, args, opts, feeder)
      with {:ok, stream} <- opened, do: Feeder.go(feeder, ref, stream)

      try do
        opened |> run_stream(ref, callback, worker.id, opts) |> delivered()
      after
        Feeder.stop(feeder, ref)
      end
    end)
  end

  # A stream's result and the stop metadata of its span: how many chunks
  # reached the callback, and the bytes of payload received.
  defp delivered({result, {chunks, bytes}}),
    do: {result, %{measurements: %{chunks: chunks, bytes: bytes}}}

  @doc false
  # Opens a stream (`feeder` nil) or a duplex call whose inputs `feeder`
  # provides, delivering to the calling process under `ref`.
  @spec open(Worker.t(), reference(), String.t(), term(), stream_opts(), pid() | nil) ::
          {:ok, reference()} | {:error, term()}
  def open(worker, ref, command, args, opts, nil),
    do: worker |> stream_request(ref, command, args, opts) |> Native.stream_open()

  def open(worker, ref, command, args, opts, feeder),
    do: duplex_open(worker, ref, command, args, opts, feeder)

  defp duplex_open(worker, ref, command, args, opts, demand_to) do
    worker
    |> stream_request(ref, command, args, opts)
    |> Map.merge(%{demand_to: demand_to, input_window: @input_window})
    |> Native.duplex_open()
  end

  # The keys of every call kind (`CallRequest` in the NIF).
  defp call_request(worker, ref, command, args, opts, timeout) do
    %{
      worker: worker.resource,
      owner: self(),
      tag: ref,
      tool: command,
      args: args,
      binaries: opts.binary_parameters,
      session_id: opts.session_id,
      metadata: Map.get(opts, :metadata, %{}),
      timeout_ms: ms(timeout)
    }
  end

  defp stream_request(worker, ref, command, args, opts) do
    worker
    |> call_request(ref, command, args, opts, opts.timeout)
    |> Map.merge(%{
      idle_timeout_ms: ms(opts.idle_timeout),
      window: @window,
      raw_binaries: opts.raw_binaries
    })
  end

  defp run_stream({:ok, stream}, ref, callback, worker_id, opts) do
    consume(stream, ref, callback, worker_id, opts.timeout)
  after
    Native.stream_cancel(stream)
    flush(ref)
  end

  defp run_stream({:error, failure}, _ref, _callback, _worker_id, _opts),
    do: {{:error, Error.from_native(failure)}, {0, 0}}

  @doc false
  # The caller's side of a stream that runs on another node: `relay` there
  # (monitored by `monitor`) opens it and forwards what the NIF sends under
  # `ref` (see `Snakepit.Cluster.Relay`); acknowledgements go back to it.
  # Chunks, ordering, halting and errors are those of a local stream.
  # Returns the result with the stop metadata of the stream's span.
  @spec relayed(pid(), reference(), reference(), (map() -> term()), timeout()) ::
          {:ok | {:error, Error.t()}, map()}
  def relayed(relay, monitor, ref, callback, timeout) do
    receive do
      {^ref, {:opened, worker_id}} ->
        {result, stop} =
          {:relay, relay, monitor}
          |> consume(ref, callback, worker_id, timeout)
          |> delivered()

        {result, Map.put(stop, :worker_id, worker_id)}

      {^ref, {:failed, error}} ->
        delivered({{:error, error}, {0, 0}})

      {:DOWN, ^monitor, :process, _, reason} ->
        delivered({{:error, Route.lost(node(relay), reason)}, {0, 0}})
    after
      backstop(timeout) -> delivered({{:error, timeout_error(timeout, nil)}, {0, 0}})
    end
  end

  # The callback's progress is acknowledged to the NIF in groups of this many
  # chunks (a quarter of the window), not one NIF call per chunk, and always
  # before waiting for more: the NIF also bounds the bytes in flight, so a
  # few large chunks may be all it can send before an acknowledgement.
  @ack_every div(@window, 4)

  # Runs the callback on each chunk as it comes; `{result, {chunks,
  # bytes}}`: how many chunks reached the callback, and the bytes of
  # payload received.
  defp consume(source, ref, callback, worker_id, timeout),
    do: consume(source, ref, callback, worker_id, timeout, 0, {0, 0})

  defp consume(source, ref, callback, worker_id, timeout, unacked, {count, bytes} = delivered) do
    wait = if unacked > 0, do: 0, else: backstop(timeout)
    monitor = monitor(source)

    receive do
      {^ref, {:chunk, chunk, size}} ->
        delivered = {count, bytes + size}
        run_batch([chunk], source, ref, callback, worker_id, timeout, unacked, delivered)

      {^ref, {:chunks, chunks, size}} ->
        delivered = {count, bytes + size}
        run_batch(chunks, source, ref, callback, worker_id, timeout, unacked, delivered)

      {^ref, :done} ->
        {:ok, delivered}

      {^ref, {:error, failure}} ->
        {{:error, Error.from_native(failure, %{worker_id: worker_id})}, delivered}

      {^ref, {:failed, error}} ->
        {{:error, error}, delivered}

      {^ref, {:input_failed, error}} ->
        {{:error, error}, delivered}

      {^ref, {:input_raised, kind, reason, stacktrace}} ->
        :erlang.raise(kind, reason, stacktrace)

      {:DOWN, ^monitor, :process, relay, reason} ->
        {{:error, Route.lost(node(relay), reason)}, delivered}
    after
      wait ->
        if unacked > 0 do
          ack(source, ref, unacked)
          consume(source, ref, callback, worker_id, timeout, 0, delivered)
        else
          {{:error, timeout_error(timeout, worker_id)}, delivered}
        end
    end
  end

  defp monitor({:relay, _relay, monitor}), do: monitor
  defp monitor(_stream), do: nil

  defp ack({:relay, relay, _monitor}, ref, count), do: send(relay, {ref, {:ack, count}})
  defp ack(stream, _ref, count), do: Native.stream_ack(stream, count)

  # Runs the callback on each chunk of a batch, in order; stops at a halt.
  defp run_batch([], source, ref, callback, worker_id, timeout, unacked, delivered) do
    if unacked >= @ack_every do
      ack(source, ref, unacked)
      consume(source, ref, callback, worker_id, timeout, 0, delivered)
    else
      consume(source, ref, callback, worker_id, timeout, unacked, delivered)
    end
  end

  defp run_batch([chunk | rest], source, ref, callback, worker_id, timeout, unacked, delivered) do
    {chunks, bytes} = delivered
    delivered = {chunks + 1, bytes}

    case callback.(chunk) do
      :halt ->
        {:ok, delivered}

      {:halt, reason} ->
        {{:error,
          Error.new(:validation, "the callback halted the stream: #{inspect(reason)}", %{
            reason: :halted,
            halt_reason: reason,
            worker_id: worker_id
          })}, delivered}

      _ ->
        run_batch(rest, source, ref, callback, worker_id, timeout, unacked + 1, delivered)
    end
  end

  # Drops messages of a stream that ended early (at most a window's worth).
  @doc false
  @spec flush(reference()) :: :ok
  def flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  defp ms(:infinity), do: 0
  defp ms(timeout), do: timeout

  defp backstop(:infinity), do: :infinity
  defp backstop(timeout), do: timeout + @margin

  defp timeout_error(timeout, %Worker{id: id}), do: timeout_error(timeout, id)

  defp timeout_error(timeout, worker_id) do
    Error.new(:timeout, "the call did not finish within #{timeout} ms", %{
      reason: :timeout,
      worker_id: worker_id
    })
  end
end
