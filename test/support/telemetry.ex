defmodule :telemetry do
  @moduledoc false
  # A stand-in for the `:telemetry` library (not available here: no Hex),
  # with the one function Snakepit calls. Being loaded when the `:snakepit`
  # application starts, it makes Snakepit emit its events, through its real
  # code path; `Snakepit.Test.Telemetry` lets a test receive them.

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    for {_event, pid} <- Snakepit.Test.Telemetry.handlers(event) do
      send(pid, {:telemetry, event, measurements, metadata})
    end

    :ok
  end
end

defmodule Snakepit.Test.Telemetry do
  @moduledoc """
  Receives Snakepit's telemetry events in a test: `attach/1` sends the
  calling process `{:telemetry, event, measurements, metadata}` for each of
  the events named, until the test ends.
  """

  @table __MODULE__

  @doc "Creates the table of handlers (in `test_helper.exs`)."
  @spec start() :: :ok
  def start do
    :ets.new(@table, [:named_table, :public, :bag, read_concurrency: true])
    :ok
  end

  @doc "Sends the calling process the events named in `events`."
  @spec attach([[atom()]]) :: :ok
  def attach(events) do
    me = self()
    :ets.insert(@table, for(event <- events, do: {event, me}))
    ExUnit.Callbacks.on_exit(fn -> :ets.match_delete(@table, {:_, me}) end)
    :ok
  end

  @doc false
  @spec handlers([atom()]) :: [{[atom()], pid()}]
  def handlers(event) do
    :ets.lookup(@table, event)
  rescue
    # Events before the table exists (the application starts first).
    ArgumentError -> []
  end
end
