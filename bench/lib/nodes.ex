defmodule Bench.Nodes do
  @moduledoc false
  # The bench's cross-node section: distribution and the peer node come
  # from test/support/distribution.ex (as for test/snakepit/cluster_test.exs,
  # required by bench/run.exs); here, the bench's pool on the peer.

  alias Snakepit.Test.{OsProcesses, Wait}

  # Starts a pool with `opts` on `node`, under its Snakepit.Supervisor (a
  # pool started with start_link from the `:erpc` process would go with it);
  # returns its workers' OS pids once it shows on this node, in
  # `Snakepit.Cluster.pools()`, with all its workers.
  def start_pool(node, opts) do
    name = Keyword.fetch!(opts, :name)
    size = Keyword.fetch!(opts, :size)

    {:ok, _} =
      :erpc.call(node, Supervisor, :start_child, [Snakepit.Supervisor, {Snakepit.Pool, opts}])

    {:ok, workers} = :erpc.call(node, Snakepit.Pool, :worker_info, [name])

    listed? = fn ->
      Snakepit.Cluster.pools()
      |> Map.get(name, [])
      |> Enum.any?(&match?(%{node: ^node, workers: ^size}, &1))
    end

    Wait.until(listed?, 10_000) ||
      raise "pool #{inspect(name)} of #{node} not listed in Snakepit.Cluster.pools()"

    for %{os_pid: os_pid} <- workers, do: os_pid
  end

  # Stops the peer, then waits until its Python workers (`os_pids`) are gone.
  def stop_peer(peer, os_pids) do
    :ok = :peer.stop(peer)

    Wait.until(fn -> not Enum.any?(os_pids, &OsProcesses.alive?/1) end, 10_000) ||
      IO.puts(:stderr, "the peer's Python workers outlived it: #{inspect(os_pids)}")

    :ok
  end
end
