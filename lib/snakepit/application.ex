defmodule Snakepit.Application do
  @moduledoc false
  use Application

  alias Snakepit.Pool.Config

  @impl true
  def start(_type, _args) do
    with :ok <- check_native(),
         {:ok, config} <- bridge_config(),
         :ok <- fix_token(config.token),
         {:ok, pools} <- pools() do
      # Owned by this long-lived process so registered tools survive a
      # restart of the bridge process.
      Snakepit.ElixirTools.init_table()
      Snakepit.Telemetry.setup()

      children = [
        {Registry, keys: :unique, name: Snakepit.PoolRegistry},
        %{id: :pg, start: {:pg, :start_link, [Snakepit.Cluster.scope()]}},
        Snakepit.Cluster.Callers,
        Snakepit.Cluster.Load,
        Snakepit.Cluster.Sessions,
        Snakepit.ElixirTools,
        Snakepit.Objects.Keeper,
        Snakepit.Bridge
        | pools
      ]

      Supervisor.start_link(children, strategy: :one_for_one, name: Snakepit.Supervisor)
    end
  end

  # The tree is down; a bridge whose process crashed for good would otherwise
  # keep serving, and be taken over by the next start.
  @impl true
  def stop(_state), do: Snakepit.Bridge.discard(Snakepit.Bridge)

  defp bridge_config do
    with {:error, error} <- Snakepit.Bridge.config([]), do: {:error, Exception.message(error)}
  end

  # A configured token is the node's before any worker or bridge uses one.
  defp fix_token(nil), do: :ok

  defp fix_token(token) do
    with {:error, message} <- Snakepit.Native.bridge_set_token(token), do: {:error, message}
  end

  defp check_native do
    if Snakepit.Native.loaded?(),
      do: :ok,
      else:
        {:error,
         "the Snakepit NIF is not loaded: run `mix compile` (it builds the Rust workspace)"}
  end

  # Validates every configured pool before starting any, so a typo in one pool
  # is reported as such rather than as a crash of the supervisor.
  defp pools do
    pools = Application.get_env(:snakepit, :pools, [])

    with {:ok, configs} <- validate(pools),
         :ok <- unique_names(configs) do
      {:ok, Enum.map(pools, &{Snakepit.Pool, &1})}
    end
  end

  defp validate(pools) when is_list(pools) do
    Enum.reduce_while(pools, {:ok, []}, fn opts, {:ok, acc} ->
      case Config.new(opts) do
        {:ok, config} -> {:cont, {:ok, [config | acc]}}
        {:error, error} -> {:halt, {:error, Exception.message(error)}}
      end
    end)
  end

  defp validate(other),
    do: {:error, "config :snakepit, :pools must be a list, got: #{inspect(other)}"}

  defp unique_names(configs) do
    case configs |> Enum.frequencies_by(& &1.name) |> Enum.filter(fn {_, n} -> n > 1 end) do
      [] -> :ok
      dups -> {:error, "duplicate pool names in config: #{inspect(Enum.map(dups, &elem(&1, 0)))}"}
    end
  end
end
