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

  @spec stream(Worker.t(), String.t(), term(), map(), String.t(), (map() -> term()), timeout()) ::
          :ok | {:error, Error.t()}
  def stream(%Worker{} = worker, command, args, binaries, session_id, callback, timeout) do
    ref = make_ref()

    case Native.stream_open(
           worker.resource,
           self(),
           ref,
           command,
           args,
           binaries,
           session_id,
           ms(timeout),
           @window
         ) do
      {:ok, stream} ->
        try do
          consume(stream, ref, callback, worker, timeout)
        after
          Native.stream_cancel(stream)
          flush(ref)
        end

      {:error, failure} ->
        {:error, Error.from_native(failure)}
    end
  end

  defp consume(stream, ref, callback, worker, timeout) do
    receive do
      {^ref, {:chunk, chunk}} ->
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
            Native.stream_ack(stream, 1)
            consume(stream, ref, callback, worker, timeout)
        end

      {^ref, :done} ->
        :ok

      {^ref, {:error, failure}} ->
        {:error, Error.from_native(failure, %{worker_id: worker.id})}
    after
      backstop(timeout) -> {:error, timeout_error(timeout, worker)}
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
