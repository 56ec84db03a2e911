defmodule Snakepit.ClusterTest do
  # Pools of other nodes, seen through Erlang distribution: a real peer node
  # (`:peer`, this machine) running Snakepit and its own Python workers.
  use ExUnit.Case, async: false

  alias Snakepit.Error
  alias Snakepit.Test.{OsProcesses, Pools, Wait}

  @moduletag :distributed
  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  setup_all do
    {_, epmd_was_running} = System.cmd("epmd", ["-names"], stderr_to_stdout: true)

    on_exit(fn ->
      :net_kernel.stop()
      # Started for this test: stopped with it.
      if epmd_was_running != 0, do: System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
    end)

    System.cmd("epmd", ["-daemon"])
    # The daemon answers once it listens.
    assert Wait.until(
             fn -> match?({_, 0}, System.cmd("epmd", ["-names"], stderr_to_stdout: true)) end,
             5_000
           )

    # Peers come and go (one is killed): `global` must not disconnect the
    # next ones to "prevent overlapping partitions". It reads the setting
    # when it starts.
    Application.put_env(:kernel, :prevent_overlapping_partitions, false)
    :ok = :supervisor.terminate_child(:kernel_sup, :global_name_server)
    {:ok, _} = :supervisor.restart_child(:kernel_sup, :global_name_server)
    name = :"snakepit_test_#{System.unique_integer([:positive])}@127.0.0.1"
    {:ok, _} = :net_kernel.start([name, :longnames])
    :ok
  end

  defp start_peer do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    args = [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false" | paths]
    name = :"snakepit_peer_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args})

    # No pool but those a test starts.
    :ok = :erpc.call(node, Application, :load, [:snakepit])
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

  defp requests(node, pool) do
    {:ok, stats} = :erpc.call(node, Snakepit.Pool, :stats, [pool])
    stats.requests
  end

  defp marker do
    path = Path.join(System.tmp_dir!(), "snakepit_cluster_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "a pool of another node is called by name; :node pins a call" do
    {peer, node} = start_peer()
    start_pool(node, name: :route_remote)
    assert Wait.until(fn -> match?([%{node: ^node, free: 8}], members(:route_remote)) end, 5_000)

    assert {:ok, 5} = Snakepit.execute("add", %{a: 2, b: 3}, pool: :route_remote)
    assert requests(node, :route_remote) == 1
    assert {:ok, 7} = Snakepit.execute("add", %{a: 3, b: 4}, pool: :route_remote, node: node)
    assert requests(node, :route_remote) == 2

    # Described by one of its workers there.
    assert {:ok, %{"tools" => tools}} = Snakepit.describe(pool: :route_remote)
    assert Enum.any?(tools, &(&1["name"] == "slow_steps"))
    assert requests(node, :route_remote) == 3

    # Pinned to a node without the pool: that node's answer.
    assert {:error, %Error{details: %{reason: :unknown_pool}}} =
             Snakepit.execute("add", %{a: 1, b: 1}, pool: :default, node: node)

    # A node that is not there; a node that is no atom.
    assert {:error, %Error{category: :transport, details: %{reason: :node_down}}} =
             Snakepit.execute("add", %{a: 1, b: 1}, pool: :route_remote, node: :"nobody@127.0.0.1")

    assert {:error, %Error{category: :validation, details: %{option: :node}}} =
             Snakepit.execute("add", %{a: 1, b: 1}, pool: :route_remote, node: "b@host")

    # Calls of other kinds, and calls in a session, stay on this node.
    assert {:error, %Error{category: :validation, details: %{option: :node}}} =
             Snakepit.execute_stream("stream_numbers", %{count: 2}, fn _ -> :ok end, node: node)

    assert {:error, %Error{category: :validation, details: %{option: :node}}} =
             Snakepit.execute_in_session("s", "add", %{a: 1, b: 1}, node: node)

    :ok = :peer.stop(peer)
  end

  test "the caller's node first while it has a free slot, then the node with the most" do
    {peer, node} = start_peer()
    local = :route_both
    Pools.start!(@showcase, name: local, concurrency: 1)
    start_pool(node, name: :route_both, concurrency: 1)

    # Both listed, the peer's free slot published.
    assert Wait.until(fn -> Enum.map(members(local), & &1.free) == [1, 1] end, 5_000)
    assert {:ok, 2} = Snakepit.execute("add", %{a: 1, b: 1}, pool: local)
    assert requests(node, local) == 0

    busy =
      Task.async(fn ->
        Snakepit.execute("slow_steps", %{steps: 20, step_ms: 100}, pool: local, timeout: 30_000)
      end)

    assert Wait.until(fn -> match?({:ok, %{in_flight: 1}}, Snakepit.Pool.stats(local)) end, 5_000)
    assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: local)
    assert requests(node, local) == 1
    assert {:ok, %{"steps" => 20}} = Task.await(busy, 30_000)
    :ok = :peer.stop(peer)
  end

  test "a remote call stops when its caller exits, and fails at once when its node goes down" do
    {_peer, node} = start_peer()
    os_pids = start_pool(node, name: :route_faults)
    assert Wait.until(fn -> match?([%{node: ^node}], members(:route_faults)) end, 5_000)
    stopped = marker()
    params = %{steps: 600, step_ms: 50, marker_path: stopped}

    caller =
      spawn(fn ->
        Snakepit.execute("slow_steps", params, pool: :route_faults, timeout: 60_000)
      end)

    assert Wait.until(fn -> File.read(stopped) == {:ok, "started"} end, 10_000)
    Process.exit(caller, :kill)
    # The Python tool on the other node was cancelled.
    assert Wait.until(fn -> File.read(stopped) == {:ok, "cancelled"} end, 10_000)

    test = self()
    running = marker()

    spawn(fn ->
      params = %{steps: 600, step_ms: 50, marker_path: running}

      send(
        test,
        {:result, Snakepit.execute("slow_steps", params, pool: :route_faults, timeout: 60_000)}
      )
    end)

    assert Wait.until(fn -> File.read(running) == {:ok, "started"} end, 10_000)
    vm = :erpc.call(node, System, :pid, [])
    System.cmd("kill", ["-KILL", vm])

    assert_receive {:result,
                    {:error,
                     %Error{category: :transport, details: %{reason: :node_down, node: ^node}}}},
                   10_000

    assert Wait.until(fn -> not Enum.any?(os_pids, &OsProcesses.alive?/1) end, 10_000)
    assert Wait.until(fn -> members(:route_faults) == [] end, 5_000)
  end
end
