defmodule Snakepit.Call.Feeder do
  @moduledoc false
  # Feeds the inputs of a duplex call from their enumerable, in a process of
  # its own: a slow source (a microphone, a socket) then never delays the
  # outputs, which the caller handles meanwhile.
  #
  # The NIF asks for inputs with `{ref, {:demand, n}}`: a full window at first,
  # then one more each time gRPC puts an input on the wire. The feeder pulls
  # exactly that many items from the enumerable, sending each as soon as it
  # is produced, so it is read no faster than the Python tool consumes it. It tells the caller `{ref, {:input_failed,
  # error}}` when an item cannot be sent and `{ref, {:input_raised, kind,
  # reason, stacktrace}}` when the enumerable raises; it stops, halting the
  # enumerable, when the caller says so or dies.

  alias Snakepit.{Error, Native}

  @doc "Starts a feeder for `enumerable`; it waits for `go/3`."
  @spec start(pid(), reference(), Enumerable.t(), pos_integer()) :: pid()
  def start(caller, ref, enumerable, window) do
    spawn(fn -> init(caller, ref, enumerable, window) end)
  end

  @doc """
  Starts feeding the opened duplex `stream`, or `{:relay, pid}`: the relay
  of a duplex call on another node (`Snakepit.Cluster.Relay`).
  """
  @spec go(pid(), reference(), reference() | {:relay, pid()}) :: :ok
  def go(feeder, ref, stream) do
    send(feeder, {ref, :go, stream})
    :ok
  end

  # How long a stopping feeder may take to halt its enumerable.
  @stop_grace 1_000

  @doc """
  Stops the feeder (the rest of the enumerable is not read) and waits until
  it is gone. A feeder stuck inside its enumerable (blocked in a `receive`,
  say) is killed after a grace period.
  """
  @spec stop(pid(), reference()) :: :ok
  def stop(feeder, ref) do
    monitor = Process.monitor(feeder)
    send(feeder, {ref, :stop})

    receive do
      {:DOWN, ^monitor, :process, _, _} -> :ok
    after
      @stop_grace ->
        Process.exit(feeder, :kill)

        receive do
          {:DOWN, ^monitor, :process, _, _} -> :ok
        end
    end
  end

  defp init(caller, ref, enumerable, window) do
    monitor = Process.monitor(caller)

    receive do
      {^ref, :go, stream} ->
        state = %{caller: caller, ref: ref, monitor: monitor, stream: stream}
        feed(state, reducer(enumerable), window)

      {^ref, :stop} ->
        :ok

      {:DOWN, ^monitor, :process, _, _} ->
        :ok
    end
  end

  defp loop(%{ref: ref, monitor: monitor} = state, continuation) do
    receive do
      {^ref, {:demand, count}} -> feed(state, continuation, count)
      {^ref, :stop} -> halt(continuation)
      {:DOWN, ^monitor, :process, _, _} -> halt(continuation)
    end
  end

  # Sends `count` more inputs, one at a time as the source yields them, so a
  # slow source never holds back an input it already produced.
  defp feed(state, continuation, 0), do: loop(state, continuation)

  defp feed(state, continuation, count) do
    case pull(state, continuation) do
      :raised ->
        :ok

      :done ->
        close(state)

      {item, rest} ->
        case push(state, item) do
          :ok -> feed(state, rest, count - 1)
          :stop -> halt(rest)
        end
    end
  end

  # A duplex call on another node: its relay there sends the inputs (and
  # tells the caller if one cannot be sent).
  defp push(%{stream: {:relay, relay}, ref: ref}, item) do
    send(relay, {ref, {:input, item}})
    :ok
  end

  defp push(%{stream: stream, caller: caller, ref: ref}, item),
    do: send_input(stream, caller, ref, item)

  @doc false
  # Sends one input of the duplex `stream`; `:stop` when no more should
  # follow. An input that cannot be sent fails the call (`caller` is told
  # under `ref`); a call that has ended (the tool stopped reading) just
  # needs no more input. Used here and by a remote call's relay.
  @spec send_input(reference(), pid(), reference(), term()) :: :ok | :stop
  def send_input(stream, caller, ref, item) do
    case Native.duplex_send(stream, [item]) do
      :ok ->
        :ok

      {:error, {:validation, _, _} = failure} ->
        send(caller, {ref, {:input_failed, Error.from_native(failure)}})
        :stop

      {:error, _ended} ->
        :stop
    end
  end

  defp close(%{stream: {:relay, relay}, ref: ref}), do: send(relay, {ref, :end_of_input})
  defp close(%{stream: stream}), do: Native.duplex_close(stream)

  defp pull(state, continuation) do
    case continuation.({:cont, nil}) do
      {:suspended, {:item, item}, rest} -> {item, rest}
      {:done, _} -> :done
      {:halted, _} -> :done
    end
  catch
    kind, reason ->
      send(state.caller, {state.ref, {:input_raised, kind, reason, __STACKTRACE__}})
      :raised
  end

  # A continuation that suspends after each item.
  defp reducer(enumerable) do
    &Enumerable.reduce(enumerable, &1, fn item, _acc -> {:suspend, {:item, item}} end)
  end

  defp halt(:done), do: :ok

  defp halt(continuation) do
    continuation.({:halt, nil})
    :ok
  end
end
