defmodule Snakepit.ClusterTest do
  # Pools of other nodes, seen through Erlang distribution: a real peer node
  # (`:peer`, this machine) running Snakepit and its own Python workers.
  use ExUnit.Case, async: false

  alias Snakepit.Test.{OsProcesses, Wait}

  @moduletag :distributed
  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  setup_all do
    {_, epmd_was_running} = System.cmd("epmd", ["-names"], stderr_to_stdout: true)
    System.cmd("epmd", ["-daemon"])
    name = :"snakepit_test_#{System.unique_integer([:positive])}@127.0.0.1"
    {:ok, _} = :net_kernel.start([name, :longnames])

    on_exit(fn ->
      :net_kernel.stop()
      # Started for this test: stopped with it.
      if epmd_was_running != 0, do: System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
    end)

    :ok
  end

  defp start_peer do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    name = :"snakepit_peer_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: paths})

    :ok = :erpc.call(node, Application, :put_env, [:snakepit, :pools, []])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit])
    {peer, node}
  end

  defp start_pool(node, opts) do
    {:ok, _} =
      :erpc.call(node, Supervisor, :start_child, [
        Snakepit.Supervisor,
        {Snakepit.Pool, Keyword.merge([size: 1, adapter: @showcase], opts)}
      ])

    {:ok, workers} = :erpc.call(node, Snakepit.Pool, :worker_info, [opts[:name]])
    for %{os_pid: os_pid} <- workers, do: os_pid
  end

  defp members(pool), do: Map.get(Snakepit.Cluster.pools(), pool, [])

  test "a peer's pools are seen with their free capacity, and go with the peer" do
    {peer, node} = start_peer()
    os_pids = start_pool(node, name: :cluster_gpu, concurrency: 4)
    os_pids = os_pids ++ start_pool(node, name: :cluster_private, local_only: true)

    assert Wait.until(
             fn -> match?([%{node: ^node, free: 4, workers: 1}], members(:cluster_gpu)) end,
             5_000
           )

    # The default pool of this node is listed as this node's.
    assert Enum.any?(members(:default), &(&1.node == node()))
    # Kept to its node: not listed here.
    assert members(:cluster_private) == []

    # A call running on the peer shows in the capacity published here.
    caller =
      Task.async(fn ->
        :erpc.call(node, Snakepit, :execute, [
          "slow_steps",
          %{steps: 20, step_ms: 100},
          [pool: :cluster_gpu, timeout: 30_000]
        ])
      end)

    assert Wait.until(fn -> match?([%{free: 3}], members(:cluster_gpu)) end, 5_000)
    assert {:ok, %{"steps" => 20}} = Task.await(caller, 30_000)
    assert Wait.until(fn -> match?([%{free: 4}], members(:cluster_gpu)) end, 5_000)

    :ok = :peer.stop(peer)
    assert Wait.until(fn -> members(:cluster_gpu) == [] end, 5_000)
    assert Snakepit.Cluster.Load.of(:cluster_gpu, node) == %{free: 0, workers: 0}
    # The peer's Python workers went with it.
    assert Wait.until(fn -> not Enum.any?(os_pids, &OsProcesses.alive?/1) end, 10_000)
  end
end
