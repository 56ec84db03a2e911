defmodule Snakepit.Bridge.Config do
  alias Snakepit.{Limits, Options}

  @schema [
    address: [
      type: {:custom, &__MODULE__.check_address/1},
      default: "127.0.0.1:0",
      doc: """
      where the bridge listens, `"ip:port"` (`"[ip6]:port"`); port 0 picks a
      free one, a fixed port suits outside clients. Beyond loopback only with
      `:tls`
      """
    ],
    tls: [
      type: {:custom, &__MODULE__.check_tls/1},
      default: nil,
      doc_default: "none",
      doc: """
      `[certfile: path, keyfile: path]` (PEM): serve TLS only, with this
      certificate chain and key; needed to listen beyond loopback
      """
    ],
    token: [
      type: {:custom, &__MODULE__.check_token/1},
      default_by: &__MODULE__.token_from_environment/0,
      doc_default: "`SNAKEPIT_TOKEN` from the environment, else a random one",
      doc: """
      the node's token, which every worker and outside client sends (16 to
      1 024 visible ASCII characters); fix it so that outside clients can be
      configured with it, else read it with `Snakepit.Bridge.token/0`
      """
    ],
    heartbeat_ms: [
      type: :pos_integer,
      max: 4_000_000_000,
      default: 5_000,
      doc: "ms between heartbeats of a `WatchVariables` stream when it is quiet"
    ],
    session_ttl: [
      type: :pos_integer,
      # What the store (and the bridge's `uint32 ttl_seconds`) can hold.
      max: 4_294_967_295,
      default: 3_600,
      doc: "seconds of disuse before a session expires"
    ],
    max_sessions: [
      type: :pos_integer,
      max: 4_294_967_295,
      default: 10_000,
      doc: "sessions the store holds at most"
    ],
    max_variables_per_session: [
      type: :pos_integer,
      max: 4_294_967_295,
      default: 1_000,
      doc: "variables one session holds at most"
    ],
    watch_buffer: [
      type: :pos_integer,
      # The store's largest (`snakepit_core::session::MAX_WATCH_BUFFER`).
      max: 1_048_576,
      default: 1_024,
      doc: "updates held per watcher before overflow (see `Snakepit.Session.watch/3`)"
    ],
    max_message_bytes: [
      type: :pos_integer,
      # tonic's limits are `usize`; 4 GiB keeps them meaningful everywhere.
      max: 4 * 1024 * 1024 * 1024,
      default: Limits.max_message_bytes(),
      doc: "largest message the bridge receives or sends"
    ]
  ]

  @moduledoc """
  Validated options of the node's bridge server (`Snakepit.Bridge`), set with
  `config :snakepit, :bridge, ...`:

  #{Options.docs(@schema)}

  Invalid options are a `:validation` error whose `details.option` names the
  option.
  """

  defstruct Options.defaults(@schema)

  @type t :: %__MODULE__{
          address: String.t(),
          tls: %{certfile: String.t(), keyfile: String.t()} | nil,
          token: String.t() | nil,
          heartbeat_ms: pos_integer(),
          session_ttl: pos_integer(),
          max_sessions: pos_integer(),
          max_variables_per_session: pos_integer(),
          watch_buffer: pos_integer(),
          max_message_bytes: pos_integer()
        }

  @doc """
  Validates keyword options into a config, or explains what is wrong.

      iex> {:ok, config} = Snakepit.Bridge.Config.new(max_sessions: 10)
      iex> {config.max_sessions, config.session_ttl}
      {10, 3600}
      iex> {:error, error} = Snakepit.Bridge.Config.new(max_sessions: 0)
      iex> error.message
      "bridge :max_sessions must be a positive integer of at most 4294967295, got: 0"
  """
  @spec new(term()) :: {:ok, t()} | {:error, Snakepit.Error.t()}
  def new(opts) do
    with {:ok, values} <- Options.validate(opts, @schema, "bridge"),
         :ok <- tls_beyond_loopback(values) do
      {:ok, struct!(__MODULE__, values)}
    end
  end

  defp tls_beyond_loopback(%{address: address, tls: nil}) do
    if loopback_ip?(address),
      do: :ok,
      else:
        {:error,
         Snakepit.Error.new(
           :validation,
           "bridge :address #{address} is beyond loopback: the bridge serves it over TLS only; " <>
             "give it tls: [certfile: ..., keyfile: ...], or listen on 127.0.0.1",
           %{reason: :invalid_argument, option: :address}
         )}
  end

  defp tls_beyond_loopback(_values), do: :ok

  @doc false
  # Any `"ip:port"` the server's parser takes.
  @spec check_address(term()) :: {:ok, String.t()} | {:error, String.t()}
  def check_address(address) do
    case parse_address(address) do
      {:ok, _ip} ->
        {:ok, address}

      :error ->
        {:error,
         ~s(must be "ip:port" such as "127.0.0.1:0" or "[::1]:0", got: #{inspect(address)})}
    end
  end

  @doc false
  @spec check_tls(term()) :: {:ok, map() | nil} | {:error, String.t()}
  def check_tls(nil), do: {:ok, nil}

  def check_tls(opts) when is_list(opts) do
    with true <-
           Keyword.keyword?(opts) and Enum.sort(Keyword.keys(opts)) == [:certfile, :keyfile],
         [certfile, keyfile] <- [opts[:certfile], opts[:keyfile]],
         true <- Enum.all?([certfile, keyfile], &(is_binary(&1) and String.valid?(&1))) do
      case Enum.reject([certfile, keyfile], &File.regular?/1) do
        [] -> {:ok, %{certfile: certfile, keyfile: keyfile}}
        missing -> {:error, "names files that do not exist: #{inspect(missing)}"}
      end
    else
      _ -> check_tls(:bad)
    end
  end

  def check_tls(other),
    do: {:error, "must be [certfile: path, keyfile: path], got: #{inspect(other, limit: 5)}"}

  @doc false
  # Where an unset token comes from: the environment, else none (random).
  @spec token_from_environment() :: String.t() | nil
  def token_from_environment, do: System.get_env("SNAKEPIT_TOKEN")

  @doc false
  # A token travels as a gRPC metadata value: visible ASCII only.
  @spec check_token(term()) :: {:ok, String.t() | nil} | {:error, String.t()}
  def check_token(nil), do: {:ok, nil}

  def check_token(token) when is_binary(token) do
    if byte_size(token) in 16..1024 and token =~ ~r/^[\x21-\x7e]+$/,
      do: {:ok, token},
      else: {:error, "must be 16 to 1024 visible ASCII characters"}
  end

  def check_token(_other), do: {:error, "must be a string of 16 to 1024 visible ASCII characters"}

  # IPv4 bare, IPv6 in brackets: the forms the server's address parser takes.
  defp parse_address(address) when is_binary(address) do
    with true <- String.valid?(address),
         [_ | groups] <-
           Regex.run(~r/^(?:\[([0-9A-Fa-f:]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/, address),
         [host, port] <- Enum.reject(groups, &(&1 == "")),
         {:ok, ip} <- :inet.parse_strict_address(String.to_charlist(host)),
         true <- String.to_integer(port) <= 65_535 do
      {:ok, ip}
    else
      _ -> :error
    end
  end

  defp parse_address(_address), do: :error

  defp loopback_ip?(address) do
    case parse_address(address) do
      {:ok, ip} -> loopback?(ip)
      :error -> false
    end
  end

  defp loopback?({127, _, _, _}), do: true
  defp loopback?({0, 0, 0, 0, 0, 0, 0, 1}), do: true
  defp loopback?(_), do: false
end
