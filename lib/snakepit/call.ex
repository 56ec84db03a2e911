defmodule Snakepit.Call do
  @moduledoc false
  # The hot path: runs in the caller's process. The NIF answers with messages
  # tagged by a fresh reference; nothing here goes through a GenServer.
  # Each NIF entry point takes one request map, built here in one go (its
  # keys are the fields of `CallRequest` in native/snakepit_nif/src/call.rs,
  # plus `StreamOptions` for streams and `DuplexInputs` for duplex calls).

  alias Snakepit.{Error, Native, Worker}
  alias Snakepit.Call.Feeder

  # Chunks the NIF may send ahead of the callback.
  @window 32
  # Extra wait beyond the NIF's own deadline, in case its timeout message is
  # late; the NIF's timeout is the one that normally fires.
  @margin 1_000

  @typedoc """
  What a unary call takes besides its tool and arguments: the call options
  `:binary_parameters` (raw parameters, by name) and `:session_id` (`""` for
  none). Other keys are ignored.
  """
  @type call_opts :: %{
          required(:binary_parameters) => map(),
          required(:session_id) => String.t(),
          optional(atom()) => term()
        }

  @spec unary(Worker.t(), String.t(), term(), call_opts(), timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def unary(%Worker{} = worker, command, args, opts, timeout) do
    ref = make_ref()

    worker
    |> call_request(ref, command, args, opts, timeout)
    |> Native.call_unary()
    |> await(ref, worker, timeout)
  end

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

  @spec stream(Worker.t(), String.t(), term(), (map() -> term()), stream_opts()) ::
          :ok | {:error, Error.t()}
  def stream(%Worker{} = worker, command, args, callback, opts) do
    ref = make_ref()

    worker
    |> stream_request(ref, command, args, opts)
    |> Native.stream_open()
    |> run_stream(ref, callback, worker, opts)
  end

  # Inputs travel through a channel of this many places in the NIF.
  @input_window 8

  @spec duplex(Worker.t(), String.t(), term(), Enumerable.t(), (map() -> term()), stream_opts()) ::
          :ok | {:error, Error.t()}
  def duplex(%Worker{} = worker, command, args, inputs, callback, opts) do
    ref = make_ref()
    feeder = Feeder.start(self(), ref, inputs, @input_window)

    opened =
      worker
      |> stream_request(ref, command, args, opts)
      |> Map.merge(%{demand_to: feeder, input_window: @input_window})
      |> Native.duplex_open()

    with {:ok, stream} <- opened, do: Feeder.go(feeder, ref, stream)

    try do
      run_stream(opened, ref, callback, worker, opts)
    after
      Feeder.stop(feeder, ref)
    end
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

  defp run_stream({:ok, stream}, ref, callback, worker, opts) do
    consume(stream, ref, callback, worker, opts)
  after
    Native.stream_cancel(stream)
    flush(ref)
  end

  defp run_stream({:error, failure}, _ref, _callback, _worker, _opts),
    do: {:error, Error.from_native(failure)}

  # The callback's progress is acknowledged to the NIF in groups of this many
  # chunks (a quarter of the window), not one NIF call per chunk, and always
  # before waiting for more: the NIF also bounds the bytes in flight, so a
  # few large chunks may be all it can send before an acknowledgement.
  @ack_every div(@window, 4)

  defp consume(stream, ref, callback, worker, opts, unacked \\ 0) do
    wait = if unacked > 0, do: 0, else: backstop(opts.timeout)

    receive do
      {^ref, {:chunk, chunk}} ->
        run_batch([chunk], stream, ref, callback, worker, opts, unacked)

      {^ref, {:chunks, chunks}} ->
        run_batch(chunks, stream, ref, callback, worker, opts, unacked)

      {^ref, :done} ->
        :ok

      {^ref, {:error, failure}} ->
        {:error, Error.from_native(failure, %{worker_id: worker.id})}

      {^ref, {:input_failed, error}} ->
        {:error, error}

      {^ref, {:input_raised, kind, reason, stacktrace}} ->
        :erlang.raise(kind, reason, stacktrace)
    after
      wait ->
        if unacked > 0 do
          Native.stream_ack(stream, unacked)
          consume(stream, ref, callback, worker, opts, 0)
        else
          {:error, timeout_error(opts.timeout, worker)}
        end
    end
  end

  # Runs the callback on each chunk of a batch, in order; stops at a halt.
  defp run_batch([], stream, ref, callback, worker, opts, unacked) do
    if unacked >= @ack_every do
      Native.stream_ack(stream, unacked)
      consume(stream, ref, callback, worker, opts, 0)
    else
      consume(stream, ref, callback, worker, opts, unacked)
    end
  end

  defp run_batch([chunk | rest], stream, ref, callback, worker, opts, unacked) do
    case callback.(chunk) do
      :halt ->
        :ok

      {:halt, reason} ->
        {:error,
         Error.new(:validation, "the callback halted the stream: #{inspect(reason)}", %{
           reason: :halted,
           halt_reason: reason,
           worker_id: worker.id
         })}

      _ ->
        run_batch(rest, stream, ref, callback, worker, opts, unacked + 1)
    end
  end

  # Drops messages of a stream that ended early (at most a window's worth).
  defp flush(ref) do
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

  defp timeout_error(timeout, worker) do
    Error.new(:timeout, "the call did not finish within #{timeout} ms", %{
      reason: :timeout,
      worker_id: worker.id
    })
  end
end
