defmodule :telemetry do
  @moduledoc false
  # A minimal `:telemetry` for the bench (the library cannot be had here:
  # no Hex): handlers in an ETS table looked up on every event, then called
  # in the emitting process, as the library does.

  @table :bench_telemetry_handlers

  # Creates the handler table, owned by the calling (long-lived) process.
  def start, do: :ets.new(@table, [:named_table, :public, :duplicate_bag, read_concurrency: true])

  def attach(id, event, fun, config) do
    :ets.insert(@table, {event, id, fun, config})
    :ok
  end

  def detach(id) do
    :ets.match_delete(@table, {:_, id, :_, :_})
    :ok
  end

  def execute(event, measurements, metadata) do
    for {_event, _id, fun, config} <- :ets.lookup(@table, event),
        do: fun.(event, measurements, metadata, config)

    :ok
  end
end
