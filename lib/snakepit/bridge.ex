defmodule Snakepit.Bridge do
  @moduledoc """
  The node's bridge server: what Python calls back into.

  One bridge runs per node, started with the application before any pool. It
  serves the session store (`Snakepit.Session`) and the Elixir tools
  (`Snakepit.ElixirTools`) over gRPC (`proto/snakepit/v1/bridge.proto`), on
  loopback, and refuses every request without the node's token. Workers find
  its address and the token in their environment
  (`SNAKEPIT_BRIDGE_ADDRESS`, `SNAKEPIT_TOKEN`); a Python program outside the
  pools can connect with `address/0` and `token/0`.

  ## Configuration

      config :snakepit, :bridge,
        address: "127.0.0.1:0",          # a fixed port for outside clients
        heartbeat_ms: 5_000,             # WatchVariables heartbeat when quiet
        session_ttl: 3_600,              # seconds of disuse before a session expires
        max_sessions: 10_000,
        max_variables_per_session: 1_000,
        watch_buffer: 1_024              # updates held per watcher before overflow (see Snakepit.Session.watch/3)

  The limits are read when the node's store is first created (the first
  start of the application in this VM).

  This process also runs the Elixir tools that Python calls, each in a
  process of its own, tells the pools when a session ends so they forget
  which worker served it, and counts the mailboxes of Elixir watchers whose
  updates pile up (the bound described in `Snakepit.Session.watch/3`).
  """

  use GenServer
  require Logger

  alias Snakepit.Native

  @defaults [
    address: "127.0.0.1:0",
    heartbeat_ms: 5_000,
    session_ttl: 3_600,
    max_sessions: 10_000,
    max_variables_per_session: 1_000,
    watch_buffer: 1_024,
    max_message_bytes: 256 * 1024 * 1024
  ]

  @doc false
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "The bridge's address, `\"127.0.0.1:<port>\"`."
  @spec address() :: String.t()
  def address, do: :persistent_term.get({__MODULE__, :address})

  @doc """
  The node's token, which every request to the bridge (and to workers) must
  carry in the `x-snakepit-token` metadata entry. Keep it secret.
  """
  @spec token() :: String.t()
  def token, do: Native.bridge_token()

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)
    config = Keyword.merge(@defaults, Application.get_env(:snakepit, :bridge, []))
    config = Keyword.merge(config, opts)

    options = %{
      address: config[:address],
      heartbeat_ms: config[:heartbeat_ms],
      max_sessions: config[:max_sessions],
      max_variables_per_session: config[:max_variables_per_session],
      session_ttl_s: config[:session_ttl],
      watch_buffer: config[:watch_buffer],
      max_message_bytes: config[:max_message_bytes]
    }

    case Native.bridge_start(options, self()) do
      {:ok, address} ->
        :persistent_term.put({__MODULE__, :address}, address)
        {:ok, %{}}

      {:error, message} ->
        {:stop, "the bridge server did not start: #{message}"}
    end
  end

  @impl true
  def handle_info({:snakepit_tool_call, call, name, args, context}, state) do
    Snakepit.ElixirTools.run(call, name, args, context)
    {:noreply, state}
  end

  def handle_info({:snakepit_session_ended, session_id, _reason}, state) do
    Snakepit.Pool.forget_session(session_id)
    {:noreply, state}
  end

  # A watch's forwarder asks how full its watcher's mailbox is (see
  # `Snakepit.Session.watch/3`). Counted in a process of its own: asking
  # waits for the watcher to handle the request, which a busy watcher may
  # delay, and this process must stay free for Python's tool calls.
  def handle_info({:snakepit_watch_count, handle, watcher, question}, state) do
    spawn(fn -> Snakepit.Session.count_mailbox(handle, watcher, question) end)
    {:noreply, state}
  end

  def handle_info({:EXIT, _pid, _reason}, state), do: {:noreply, state}

  # The server lives in the NIF: stopped with the application, it keeps
  # running across a crash of this process, whose successor adopts it, so
  # workers keep a working address.
  @impl true
  def terminate(reason, _state) do
    if reason in [:normal, :shutdown] or match?({:shutdown, _}, reason) do
      Native.bridge_stop()
      :persistent_term.erase({__MODULE__, :address})
    end

    :ok
  end
end
