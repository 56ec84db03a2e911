defmodule Snakepit.Status do
  @moduledoc """
  A snapshot of this node's Snakepit: its pools with their workers and
  queue, and its sessions. `mix snakepit.status` prints it, for this project
  or for a running node.
  """

  alias Snakepit.{Pool, Session}

  @typedoc "What `collect/0` returns."
  @type t :: %{
          node: node(),
          pools: [
            %{
              name: atom(),
              stats: map(),
              workers: [map()]
            }
          ],
          sessions: non_neg_integer()
        }

  @doc """
  This node's pools (`Snakepit.Pool.stats/1` and `Snakepit.Pool.worker_info/1`
  of each, sorted by name) and how many sessions it holds.
  """
  @spec collect() :: t()
  def collect do
    pools =
      for %{name: name} <- Enum.sort_by(Pool.running(), & &1.name),
          {:ok, stats} <- [Pool.stats(name)],
          {:ok, workers} <- [Pool.worker_info(name)] do
        %{name: name, stats: stats, workers: workers}
      end

    %{node: node(), pools: pools, sessions: length(Session.list())}
  end

  @doc "`collect/0`'s snapshot as text, a table of workers per pool."
  @spec format(t()) :: String.t()
  def format(%{node: node, pools: pools, sessions: sessions}) do
    header = "Node #{node}: #{length(pools)} pool(s), #{sessions} session(s)"
    Enum.map_join([header | Enum.map(pools, &format_pool/1)], "\n\n", & &1)
  end

  defp format_pool(%{name: name, stats: stats, workers: workers}) do
    summary =
      "Pool #{inspect(name)}: #{stats.workers}/#{length(workers)} workers ready, " <>
        "#{stats.in_flight} in flight, #{stats.queued} queued; " <>
        "#{stats.requests} requests, #{stats.errors} errors, " <>
        "#{stats.restarts} restarts, #{stats.recycles} recycles"

    rows =
      for w <- workers do
        [
          w.id,
          to_string(w.os_pid),
          to_string(w.status),
          duration(w.uptime_ms),
          to_string(w.served),
          to_string(w.in_flight),
          memory(w.memory_mb)
        ]
      end

    table([["worker", "os pid", "state", "uptime", "requests", "in flight", "memory"] | rows])
    |> then(&(summary <> "\n" <> &1))
  end

  defp table(rows) do
    widths =
      rows
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length/1) |> Enum.max() end)

    Enum.map_join(rows, "\n", fn row ->
      row
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, width} -> String.pad_trailing(cell, width) end)
      |> then(&("  " <> String.trim_trailing(&1)))
    end)
  end

  defp duration(ms) when ms < 1_000, do: "#{ms} ms"
  defp duration(ms) when ms < 60_000, do: "#{div(ms, 1_000)} s"
  defp duration(ms) when ms < 3_600_000, do: "#{div(ms, 60_000)} min #{rem(div(ms, 1_000), 60)} s"
  defp duration(ms), do: "#{div(ms, 3_600_000)} h #{rem(div(ms, 60_000), 60)} min"

  defp memory(nil), do: "-"
  defp memory(mb), do: "#{mb} MiB"
end
