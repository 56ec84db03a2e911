defmodule Snakepit.Bridge do
  @moduledoc """
  The node's bridge server: what Python calls back into.

  The application starts one bridge, named `Snakepit.Bridge`, before any pool.
  It serves its session store (`Snakepit.Session`) and the Elixir tools
  (`Snakepit.ElixirTools`) over gRPC (`proto/snakepit/v1/bridge.proto`), on
  loopback, and refuses every request without the node's token. Workers find
  its address and the token in their environment
  (`SNAKEPIT_BRIDGE_ADDRESS`, `SNAKEPIT_TOKEN`); a Python program outside the
  pools can connect with `address/0` and `token/0`.

  ## Configuration

      config :snakepit, :bridge, max_sessions: 50_000, session_ttl: 600

  The options, their defaults and bounds: `Snakepit.Bridge.Config`.

  Every start validates the configuration (an unknown key or a bad value
  stops the application's start with a message naming it) and creates the
  server and its store with it: the server and the store belong to this
  process, and stopping it stops them. After a crash, the restarted process
  takes over the running server and its store (with the same configuration),
  so workers keep a working address and sessions survive. A bridge asked for
  port 0 takes the port it had before a stop again when that port is free.

  More bridges, each with a store and limits of its own, can run in one VM
  (`start_link/1` with another `:name`), e.g. in tests; pools and
  `Snakepit.Session` use the application's.

  This process also runs the Elixir tools that Python calls, each in a
  process of its own, tells the pools when a session ends so they forget
  which worker served it, and counts the mailboxes of Elixir watchers whose
  updates pile up (the bound described in `Snakepit.Session.watch/3`).
  """

  use GenServer

  alias Snakepit.{ElixirTools, Error, Native}
  alias Snakepit.Bridge.Config

  @doc false
  def child_spec(opts) do
    %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
  end

  @doc """
  Starts a bridge with its own server and session store.

  Options: `:name` (an atom; default `Snakepit.Bridge`, the application's
  bridge) and any key of the configuration above, which overrides
  `config :snakepit, :bridge`. Returns
  `{:error, %Snakepit.Error{category: :validation}}` for a bad
  configuration, before starting anything.
  """
  @spec start_link(keyword()) :: GenServer.on_start() | {:error, Error.t()}
  def start_link(opts \\ [])

  def start_link(opts) when not is_list(opts),
    do: invalid("the bridge's options must be a keyword list, got: #{inspect(opts)}")

  def start_link(opts) do
    {name, opts} = Keyword.pop(opts, :name, __MODULE__)

    with {:ok, name} <- name(name),
         {:ok, config} <- config(opts) do
      GenServer.start_link(__MODULE__, {name, config}, name: name)
    end
  end

  @doc """
  The address of bridge `name` (by default the application's),
  `"127.0.0.1:<port>"`. Raises `ArgumentError` if it is not running.
  """
  @spec address(atom()) :: String.t()
  def address(name \\ __MODULE__), do: running!(name).address

  @doc """
  The node's token, which every request to the bridge (and to workers) must
  carry in the `x-snakepit-token` metadata entry. Keep it secret.
  """
  @spec token() :: String.t()
  def token, do: Native.bridge_token()

  @doc false
  # The running bridge's resource, which owns its store; the first argument
  # of the session NIFs. Raises `ArgumentError` if the bridge is not running.
  @spec store!(atom()) :: reference()
  def store!(name \\ __MODULE__), do: running!(name).bridge

  @doc false
  # The application bridge's watch buffer (`watch_buffer`), for watches
  # that do not set one.
  @spec watch_buffer() :: pos_integer()
  def watch_buffer, do: running!(__MODULE__).config.watch_buffer

  @doc false
  # The application bridge's address for a worker's environment, or nil.
  @spec worker_address() :: String.t() | nil
  def worker_address do
    case running(__MODULE__) do
      %{address: address} -> address
      nil -> nil
    end
  end

  @doc false
  # The application's configuration, validated (used by Snakepit.Application
  # to report a bad one before starting anything).
  @spec config(keyword()) :: {:ok, map()} | {:error, Error.t()}
  def config(opts) do
    configured = Application.get_env(:snakepit, :bridge, [])

    with true <- Keyword.keyword?(configured) || :not_keyword,
         {:ok, config} <- Config.new(Keyword.merge(configured, opts)) do
      # The shape `Native.bridge_start/1` takes.
      {:ok, config |> Map.from_struct() |> Map.new(fn {k, v} -> {native_key(k), v} end)}
    else
      :not_keyword ->
        invalid("config :snakepit, :bridge must be a keyword list, got: #{inspect(configured)}")

      error ->
        error
    end
  end

  defp native_key(:session_ttl), do: :session_ttl_s
  defp native_key(key), do: key

  @doc false
  # Stops bridge `name` if it is left behind (its process crashed and was not
  # restarted), so a later start does not take it over.
  @spec discard(atom()) :: :ok
  def discard(name) do
    case running(name) do
      %{bridge: bridge} ->
        :persistent_term.erase({__MODULE__, name})
        Native.bridge_stop(bridge)

      nil ->
        :ok
    end
  end

  # The resource lives in :persistent_term under the bridge's name rather
  # than in this process or an ETS table it owns: every session call reads
  # it without a message or a copy, and it outlives a crash of this process,
  # which is what lets the successor take the server over. It changes only
  # when a bridge starts or stops.
  defp running(name), do: :persistent_term.get({__MODULE__, name}, nil)

  defp running!(name) do
    running(name) ||
      raise ArgumentError,
            "no bridge named #{inspect(name)} is running (is the :snakepit application started?)"
  end

  @impl true
  def init({name, config}) do
    Process.flag(:trap_exit, true)

    case running(name) do
      %{bridge: bridge, config: ^config} ->
        # The previous process crashed: take its server over.
        :ok = Native.bridge_adopt(bridge, self())
        {:ok, %{name: name, bridge: bridge, lending: %{}}}

      _none_or_other_config ->
        :ok = discard(name)
        start(name, config)
    end
  end

  defp start(name, config) do
    with {:ok, tls} <- read_tls(config.tls) do
      serve(name, config, tls)
    end
  end

  # The certificate and key are read when the bridge starts, and kept out of
  # its config.
  defp read_tls(nil), do: {:ok, nil}

  defp read_tls(%{certfile: certfile, keyfile: keyfile}) do
    with {:ok, cert} <- File.read(certfile),
         {:ok, key} <- File.read(keyfile),
         # PEM is text; anything else is refused here, before the key could
         # reach an error report.
         true <- (String.valid?(cert) and String.valid?(key)) || {:error, :not_pem} do
      {:ok, {cert, key}}
    else
      {:error, :not_pem} ->
        {:stop,
         Error.new(:validation, "the bridge's TLS certificate and key must be PEM files", %{
           reason: :invalid_argument,
           option: :tls
         })}

      {:error, reason} ->
        {:stop,
         Error.new(
           :validation,
           "the bridge's TLS files cannot be read: #{:file.format_error(reason)}",
           %{
             reason: :invalid_argument,
             option: :tls
           }
         )}
    end
  end

  defp serve(name, config, tls) do
    options =
      config
      |> Map.put(:tls, tls)
      |> Map.put(:previous_address, :persistent_term.get({__MODULE__, name, :last_address}, nil))
      |> Map.put(:tools, ElixirTools.catalog())
      |> Map.put(:owner, self())

    case Native.bridge_start(options) do
      {:ok, {bridge, address}} ->
        :persistent_term.put({__MODULE__, name}, %{
          bridge: bridge,
          address: address,
          config: config
        })

        {:ok, %{name: name, bridge: bridge, lending: %{}}}

      {:error, message} ->
        {:stop,
         Error.new(:transport, "the bridge server did not start: #{message}", %{
           address: config.address
         })}
    end
  end

  @impl true
  def handle_info({:snakepit_tool_call, call, name, args, context}, state) do
    Snakepit.ElixirTools.run(call, name, args, context)
    {:noreply, state}
  end

  # A program outside the pools runs a tool (see `Snakepit.Bridge.Outside`):
  # checked out in a process of its own, so that this one stays free.
  def handle_info({:snakepit_checkout, call, request}, state) do
    {pid, monitor} = spawn_monitor(fn -> Snakepit.Bridge.Outside.lend(call, request) end)
    {:noreply, put_in(state.lending[monitor], {call, pid})}
  end

  # The outside client went away before it got a worker: the lending process
  # stops, and its place in the pool's queue with it.
  def handle_info({:snakepit_checkout_cancel, call}, state) do
    for {_monitor, {^call, pid}} <- state.lending, do: Process.exit(pid, :kill)
    {:noreply, state}
  end

  def handle_info({:DOWN, monitor, :process, _pid, _reason}, state),
    do: {:noreply, %{state | lending: Map.delete(state.lending, monitor)}}

  # The pools a program outside lists with the bridge's `Describe`.
  def handle_info({:snakepit_pools, call}, state) do
    Snakepit.Bridge.Outside.list_pools(call)
    {:noreply, state}
  end

  # Pools keep sessions of the application's bridge only.
  def handle_info({:snakepit_session_ended, session_id, reason}, %{name: __MODULE__} = state) do
    Snakepit.Telemetry.execute(
      [:snakepit, :session, :ended],
      %{system_time: System.system_time()},
      %{session_id: session_id, node: node(), reason: reason}
    )

    Snakepit.Pool.forget_session(session_id)
    Snakepit.Objects.Keeper.session_ended(session_id)
    {:noreply, state}
  end

  def handle_info({:snakepit_session_ended, _session_id, _reason}, state), do: {:noreply, state}

  # A watch's forwarder asks how full its watcher's mailbox is (see
  # `Snakepit.Session.watch/3`). Counted in a process of its own: asking
  # waits for the watcher to handle the request, which a busy watcher may
  # delay, and this process must stay free for Python's tool calls.
  def handle_info({:snakepit_watch_count, handle, watcher, question}, state) do
    spawn(fn -> Snakepit.Session.count_mailbox(handle, watcher, question) end)
    {:noreply, state}
  end

  def handle_info({:EXIT, _pid, _reason}, state), do: {:noreply, state}
  def handle_info(_other, state), do: {:noreply, state}

  # Stopped, the bridge stops its server; after a crash the server keeps
  # running for the successor to take over (see `init/1`).
  @impl true
  def terminate(reason, %{name: name}) do
    if reason in [:normal, :shutdown] or match?({:shutdown, _}, reason) do
      with %{address: address} <- running(name) do
        :persistent_term.put({__MODULE__, name, :last_address}, address)
      end

      discard(name)
    end

    :ok
  end

  defp name(name) when is_atom(name) and name not in [nil, true, false], do: {:ok, name}
  defp name(name), do: invalid("the bridge's :name must be an atom, got: #{inspect(name)}")

  defp invalid(message),
    do: {:error, Error.new(:validation, message, %{reason: :invalid_argument})}
end
