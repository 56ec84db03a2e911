defmodule Snakepit.Call do
  @moduledoc false
  # The hot path: runs in the caller's process. The NIF answers with messages
  # tagged by a fresh reference; nothing here goes through a GenServer.

  alias Snakepit.{Error, Native, Worker}

  # Chunks the NIF may send ahead of the callback.
  @window 32
  # Extra wait beyond the NIF's own deadline, in case its timeout message is
  # late; the NIF's timeout is the one that normally fires.
  @margin 1_000

  @spec unary(Worker.t(), String.t(), term(), map(), String.t(), timeout()) ::
          {:ok, term()} | {:error, Error.t()}
  def unary(%Worker{} = worker, command, args, binaries, session_id, timeout) do
    ref = make_ref()

    worker.resource
    |> Native.call_unary(self(), ref, command, args, binaries, session_id, ms(timeout))
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
  Stream settings: `:timeout` for the whole stream, `:idle_timeout` between
  chunks (`:infinity` for none) and `:raw_binaries` (bytes under `"data"`
  instead of base64 under `"raw_data_base64"`).
  """
  @type stream_opts :: %{
          timeout: timeout(),
          idle_timeout: timeout(),
          raw_binaries: boolean()
        }

  @spec stream(
          Worker.t(),
          String.t(),
          term(),
          map(),
          String.t(),
          (map() -> term()),
          stream_opts()
        ) ::
          :ok | {:error, Error.t()}
  def stream(%Worker{} = worker, command, args, binaries, session_id, callback, opts) do
    ref = make_ref()

    worker.resource
    |> Native.stream_open(self(), ref, command, args, binaries, session_id, native_opts(opts))
    |> run_stream(ref, callback, worker, opts, nil)
  end

  # Inputs travel through a channel of this many places in the NIF.
  @input_window 8

  @spec duplex(
          Worker.t(),
          String.t(),
          term(),
          map(),
          String.t(),
          Enumerable.t(),
          (map() -> term()),
          stream_opts()
        ) :: :ok | {:error, Error.t()}
  def duplex(%Worker{} = worker, command, args, binaries, session_id, inputs, callback, opts) do
    ref = make_ref()

    worker.resource
    |> Native.duplex_open(
      self(),
      ref,
      command,
      args,
      binaries,
      session_id,
      native_opts(opts),
      @input_window
    )
    |> run_stream(ref, callback, worker, opts, {inputs_start(inputs), @input_window})
  end

  defp native_opts(opts) do
    %{
      timeout_ms: ms(opts.timeout),
      idle_timeout_ms: ms(opts.idle_timeout),
      window: @window,
      raw_binaries: opts.raw_binaries
    }
  end

  defp run_stream({:ok, stream}, ref, callback, worker, opts, inputs) do
    # The inputs' first window is demanded up front.
    fed =
      case inputs do
        nil -> {:ok, nil}
        {source, demand} -> feed(stream, source, demand)
      end

    try do
      case fed do
        {:ok, inputs} ->
          {result, inputs} = consume(stream, ref, callback, worker, opts, inputs)
          # A stream that ended early leaves the rest of the inputs unread.
          if is_function(inputs, 1), do: inputs.({:halt, {0, []}})
          result

        {:error, error} ->
          {:error, error}
      end
    after
      Native.stream_cancel(stream)
      flush(ref)
    end
  end

  defp run_stream({:error, failure}, _ref, _callback, _worker, _opts, _inputs),
    do: {:error, Error.from_native(failure)}

  # Returns `{result, inputs}`: the unread rest of the inputs goes back to
  # the caller, which halts it.
  defp consume(stream, ref, callback, worker, opts, inputs) do
    receive do
      {^ref, {:chunk, chunk}} ->
        case callback.(chunk) do
          :halt ->
            {:ok, inputs}

          {:halt, reason} ->
            error =
              Error.new(:validation, "the callback halted the stream: #{inspect(reason)}", %{
                reason: :halted,
                halt_reason: reason,
                worker_id: worker.id
              })

            {{:error, error}, inputs}

          _ ->
            Native.stream_ack(stream, 1)
            consume(stream, ref, callback, worker, opts, inputs)
        end

      {^ref, {:demand, count}} ->
        case feed(stream, inputs, count) do
          {:ok, inputs} -> consume(stream, ref, callback, worker, opts, inputs)
          {:error, error} -> {{:error, error}, :done}
        end

      {^ref, :done} ->
        {:ok, inputs}

      {^ref, {:error, failure}} ->
        {{:error, Error.from_native(failure, %{worker_id: worker.id})}, inputs}
    after
      backstop(opts.timeout) -> {{:error, timeout_error(opts.timeout, worker)}, inputs}
    end
  end

  # -- duplex inputs, pulled from the enumerable only as the tool consumes them --

  defp inputs_start(enumerable) do
    &Enumerable.reduce(enumerable, &1, fn item, {wanted, taken} ->
      if wanted == 1,
        do: {:suspend, {0, [item | taken]}},
        else: {:cont, {wanted - 1, [item | taken]}}
    end)
  end

  # Sends up to `count` more inputs. Returns `{:ok, rest}` with the rest of
  # the enumerable (`:done` once it is exhausted and the inputs are closed),
  # or the error of an input that cannot be sent.
  defp feed(_stream, :done, _count), do: {:ok, :done}

  defp feed(stream, continuation, count) do
    {items, rest} =
      case continuation.({:cont, {count, []}}) do
        {:suspended, {_, taken}, rest} -> {Enum.reverse(taken), rest}
        {:done, {_, taken}} -> {Enum.reverse(taken), :done}
        {:halted, {_, taken}} -> {Enum.reverse(taken), :done}
      end

    case send_inputs(stream, items) do
      :ok when rest == :done ->
        Native.duplex_close(stream)
        {:ok, :done}

      :ok ->
        {:ok, rest}

      {:error, failure} ->
        if is_function(rest, 1), do: rest.({:halt, {0, []}})
        {:error, Error.from_native(failure)}
    end
  end

  defp send_inputs(_stream, []), do: :ok
  defp send_inputs(stream, items), do: Native.duplex_send(stream, items)

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
