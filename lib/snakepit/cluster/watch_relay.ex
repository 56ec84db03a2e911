defmodule Snakepit.Cluster.WatchRelay do
  @moduledoc false
  # A watch of session variables from a process on another node than the
  # session's owner: a relay process on the owner node watches the store
  # (the store sends only to local processes) and forwards each message to
  # the watcher unchanged, in order, under the watch's ref.
  #
  # The limits of a local watch hold: every `@check_every` forwarded
  # updates (a quarter of the buffer) the relay asks the watcher's node how
  # many messages the watcher has not read, and while that is the buffer or
  # more it forwards nothing (asking again after 1 ms, doubling up to
  # 64 ms). Updates then wait in the relay's mailbox, which the store counts
  # as it counts a local watcher's, then in the store, and the watch ends
  # with `:overflow` as a local one does. So the watcher's mailbox holds at
  # most about `buffer * 5 / 4` of its updates.
  #
  # The relay stops with the watch: at `Snakepit.Session.unwatch/1`, when
  # the watch ends on its own, when the watcher exits or its node
  # disconnects.

  alias Snakepit.{Bridge, Error, Session}
  alias Snakepit.Cluster.Route
  alias Snakepit.Session.Watch

  @first_pause 1
  @max_pause 64
  @ask_timeout 5_000

  @doc false
  # On the owner node (through `:erpc`): starts a relay watching for
  # `watcher` and returns its watch.
  @spec start(pid(), String.t(), list(), keyword()) :: {:ok, Watch.t()} | {:error, Error.t()}
  def start(watcher, session, identifiers, opts) do
    tag = make_ref()
    parent = self()

    {_relay, monitor} =
      spawn_monitor(fn -> init(parent, tag, watcher, [session, identifiers, opts]) end)

    receive do
      {^tag, result} ->
        Process.demonitor(monitor, [:flush])
        result

      {:DOWN, ^monitor, :process, _, reason} ->
        {:error, Route.lost(node(), reason)}
    end
  end

  @doc false
  # On the watcher's node: stops the relay and waits until it is gone, so
  # that every message it sent is in the watcher's mailbox.
  @spec stop(pid(), reference()) :: :ok
  def stop(relay, ref) do
    monitor = Process.monitor(relay)
    send(relay, {ref, :stop})

    receive do
      {:DOWN, ^monitor, :process, _, _} -> :ok
    end
  end

  defp init(parent, tag, watcher, [_session, _identifiers, opts] = args) do
    monitor = Process.monitor(watcher)

    case Session.on_owner(:watch, args) do
      {:ok, %Watch{} = watch} ->
        send(parent, {tag, {:ok, %Watch{watch | handle: {:relay, self()}}}})
        buffer = effective_buffer(opts)

        loop(%{
          watch: watch,
          watcher: watcher,
          monitor: monitor,
          buffer: buffer,
          check_every: max(div(buffer, 4), 1),
          unchecked: 0
        })

      error ->
        send(parent, {tag, error})
    end
  end

  defp effective_buffer(opts) do
    case Keyword.get(opts, :buffer, 0) do
      buffer when is_integer(buffer) and buffer > 0 -> buffer
      _default -> Bridge.watch_buffer()
    end
  end

  defp loop(%{watch: %Watch{ref: ref} = watch, monitor: monitor} = state) do
    receive do
      {:snakepit_variable, ^ref, _update} = message ->
        send(state.watcher, message)
        state |> Map.update!(:unchecked, &(&1 + 1)) |> check() |> loop()

      {:snakepit_watch_ended, ^ref, _reason} = message ->
        send(state.watcher, message)

      {^ref, :stop} ->
        Session.unwatch(watch)

      {:DOWN, ^monitor, :process, _, _} ->
        Session.unwatch(watch)
    end
  end

  defp check(%{unchecked: unchecked, check_every: every} = state) when unchecked < every,
    do: state

  defp check(state) do
    wait_for_room(state, @first_pause)
    %{state | unchecked: 0}
  end

  # Returns once the watcher has fewer than `buffer` unread messages (or
  # cannot be asked: its monitor then ends the relay).
  defp wait_for_room(%{watcher: watcher, buffer: buffer} = state, pause) do
    case Route.call_at(node(watcher), Process, :info, [watcher, :message_queue_len], @ask_timeout) do
      {:message_queue_len, length} when length >= buffer ->
        Process.sleep(pause)
        wait_for_room(state, min(pause * 2, @max_pause))

      _room_or_gone ->
        :ok
    end
  end
end
