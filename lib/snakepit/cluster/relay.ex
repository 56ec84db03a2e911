defmodule Snakepit.Cluster.Relay do
  @moduledoc false
  # The node's side of a stream (or duplex call) whose caller is on another
  # node: a process here takes a worker of the pool, opens the stream with
  # itself as the NIF's receiver, and forwards to the caller what the NIF
  # sends, under the caller's tag and in order:
  #
  #   {tag, {:opened, worker_id}}, then {tag, {:chunks, [chunk, ...], bytes}}...,
  #   then {tag, :done} or {tag, {:failed, %Snakepit.Error{}}}
  #
  # (`{tag, {:failed, error}}` alone when no stream could be opened).
  #
  # Flow control is end to end: the caller acknowledges the chunks its
  # callback has handled (`{tag, {:ack, n}}`) and the relay passes the count
  # to the NIF, which sends no more than its window ahead of them. So a slow
  # callback on the caller's node slows the Python generator here, and each
  # side holds at most a window of chunks.
  #
  # A duplex call's inputs are read on the caller's node by its feeder: the
  # relay passes the NIF's demand to it (`{tag, {:demand, n}}`) and the
  # inputs it sends (`{tag, {:input, item}}`, `{tag, :end_of_input}`) to the
  # NIF. An input that cannot be sent is `{tag, {:input_failed, error}}` to
  # the caller.
  #
  # The relay ends when the stream does, when the caller says
  # `{tag, :stop}`, or when the caller dies or its node disconnects
  # (`Snakepit.Cluster.Callers` kills it): the worker's slot comes back and the Python tool is
  # cancelled, as for a local caller.

  alias Snakepit.{Call, Error, Native, Worker}
  alias Snakepit.Call.Feeder
  alias Snakepit.Cluster.Callers
  alias Snakepit.Pool.Checkout

  @doc false
  # Runs the relay in the calling process (spawned on this node for the
  # caller). `opts` are the caller's validated call options.
  @spec run(pid(), reference(), pid() | nil, String.t(), term(), map()) :: :ok
  def run(caller, tag, feeder, command, args, opts) do
    Callers.run(caller, fn -> relay_for(caller, tag, feeder, command, args, opts) end)
  end

  defp relay_for(caller, tag, feeder, command, args, opts) do
    deadline = deadline(opts.timeout)

    result =
      with :ok <- ensure_session(opts.session_id) do
        Checkout.with_worker(opts.pool, opts, deadline, fn worker, timeout ->
          stream_opts = Call.stream_opts(opts, timeout)
          relay(worker, caller, tag, feeder, command, args, stream_opts)
        end)
      end

    with {:error, error} <- result, do: send(caller, {tag, {:failed, error}})
    :ok
  end

  defp relay(%Worker{} = worker, caller, tag, feeder, command, args, opts) do
    demand_to = if feeder, do: self()

    case Call.open(worker, tag, command, args, opts, demand_to) do
      {:ok, stream} ->
        send(caller, {tag, {:opened, worker.id}})
        if feeder, do: Feeder.go(feeder, tag, {:relay, self()})

        try do
          forward(%{stream: stream, tag: tag, caller: caller, feeder: feeder, worker: worker})
        after
          Native.stream_cancel(stream)
        end

      {:error, failure} ->
        {:error, Error.from_native(failure, %{worker_id: worker.id})}
    end
  end

  defp forward(%{stream: stream, tag: tag, caller: caller} = state) do
    receive do
      {^tag, {:chunks, _chunks, _bytes} = chunks} ->
        send(caller, {tag, chunks})
        forward(state)

      {^tag, {:chunk, chunk, bytes}} ->
        send(caller, {tag, {:chunks, [chunk], bytes}})
        forward(state)

      {^tag, {:ack, count}} ->
        Native.stream_ack(stream, count)
        forward(state)

      {^tag, {:demand, _count} = demand} ->
        send(state.feeder, {tag, demand})
        forward(state)

      {^tag, {:input, item}} ->
        # A failed input ends the call on the caller's side, which stops its feeder.
        _ = Feeder.send_input(state.stream, caller, tag, item)
        forward(state)

      {^tag, :end_of_input} ->
        Native.duplex_close(stream)
        forward(state)

      {^tag, :done} ->
        send(caller, {tag, :done})
        :ok

      {^tag, {:error, failure}} ->
        send(caller, {tag, {:failed, Error.from_native(failure, %{worker_id: state.worker.id})}})
        :ok

      {^tag, :stop} ->
        :ok
    end
  end

  # A stream in a session creates or renews it here, on its owner node.
  defp ensure_session(""), do: :ok
  defp ensure_session(id), do: Snakepit.Session.ensure(id)

  defp deadline(:infinity), do: :infinity
  defp deadline(timeout), do: System.monotonic_time(:millisecond) + timeout
end
