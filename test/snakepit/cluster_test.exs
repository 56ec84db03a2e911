defmodule Snakepit.ClusterTest do
  # Pools of other nodes, seen through Erlang distribution: a real peer node
  # (`:peer`, this machine) running Snakepit and its own Python workers.
  use ExUnit.Case, async: false

  alias Snakepit.{Error, Session}
  alias Snakepit.Test.{Distribution, Mailbox, OsProcesses, Pools, Wait}

  @bulk "bulk_adapters.BulkAdapter"
  @session_tools "session_adapters.SessionToolsAdapter"

  @moduletag :distributed
  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  setup_all do
    distribution = Distribution.start("snakepit_test")
    on_exit(fn -> Distribution.stop(distribution) end)
  end

  defp start_peer, do: Distribution.start_peer("snakepit_peer")

  defp start_pool(node, opts) do
    {:ok, _} =
      :erpc.call(node, Supervisor, :start_child, [
        Snakepit.Supervisor,
        {Snakepit.Pool,
         Keyword.merge([size: 1, adapter: @showcase, python_path: [Pools.adapters_dir()]], opts)}
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
    # mix snakepit.status --node reads it from here.
    Mix.shell(Mix.Shell.Process)

    try do
      Mix.Tasks.Snakepit.Status.run(["--node", Atom.to_string(node)])
      assert_received {:mix_shell, :info, [status]}
      assert status =~ "Node #{node}: 2 pool(s)"
      assert status =~ "Pool :cluster_gpu: 1/1 workers ready"
      assert status =~ "Pool :cluster_private: 1/1 workers ready"
    after
      Mix.shell(Mix.Shell.IO)
    end

    # Kept to its node: not listed here, not called from here.
    assert members(:cluster_private) == []

    assert {:error, %Error{details: %{reason: :unknown_pool}}} =
             Snakepit.execute("add", %{a: 1, b: 1}, pool: :cluster_private)

    assert {:error, %Error{details: %{reason: :unknown_pool}}} =
             Snakepit.execute_stream("stream_numbers", %{}, fn _ -> :ok end,
               pool: :cluster_private
             )

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

    # A session pinned there is created there.
    id = "pinned_#{System.unique_integer([:positive])}"

    assert {:ok, 2} =
             Snakepit.execute_in_session(id, "add", %{a: 1, b: 1}, pool: :route_remote, node: node)

    assert Enum.any?(:erpc.call(node, Snakepit.Session, :list, []), &(&1.id == id))

    # The universal call too.
    assert {:ok, 2.0} = Snakepit.call("math", "sqrt", [4], pool: :route_remote, node: node)

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

    # A call that runs out of time there stops the tool there.
    timed_out = marker()

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("slow_steps", %{params | marker_path: timed_out},
               pool: :route_faults,
               timeout: 500
             )

    assert Wait.until(fn -> File.read(timed_out) == {:ok, "cancelled"} end, 10_000)

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

  describe "streams across nodes" do
    test "chunks arrive in order in the caller; halting and the caller's exit stop the tool there" do
      {peer, node} = start_peer()
      start_pool(node, name: :stream_remote, adapter: @bulk)
      assert Wait.until(fn -> match?([%{node: ^node}], members(:stream_remote)) end, 5_000)
      me = self()
      count = 20_000
      Snakepit.Test.Telemetry.attach([[:snakepit, :stream, :stop]])

      assert :ok =
               Snakepit.execute_stream(
                 "many_chunks",
                 %{count: count},
                 fn chunk -> send(me, {:chunk, self(), chunk}) end,
                 pool: :stream_remote
               )

      assert requests(node, :stream_remote) == 1
      received = for _ <- 0..count, do: assert_received({:chunk, ^me, chunk}) && chunk
      assert Enum.map(Enum.drop(received, -1), & &1["i"]) == Enum.to_list(0..(count - 1))
      assert %{"is_final" => true, "_metadata" => %{"worker_id" => _}} = List.last(received)

      # Its span, here: the node and worker that ran it, the chunks.
      assert_receive {:telemetry, [:snakepit, :stream, :stop], %{chunks: chunks},
                      %{pool: :stream_remote, node: ^node, worker_id: "stream_remote-1"}}

      assert chunks == count + 1

      # A halt stops the generator on the other node.
      closed = marker()

      assert :ok =
               Snakepit.execute_stream(
                 "then_silence",
                 %{silence_ms: 30_000, marker_path: closed},
                 fn _hello -> :halt end,
                 pool: :stream_remote,
                 node: node
               )

      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 10_000)

      # So does the caller's exit.
      closed = marker()

      caller =
        spawn(fn ->
          Snakepit.execute_stream(
            "then_silence",
            %{silence_ms: 30_000, marker_path: closed},
            fn _hello -> send(me, :streaming) end,
            pool: :stream_remote
          )
        end)

      assert_receive :streaming, 10_000
      Process.exit(caller, :kill)
      assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 10_000)

      # Errors come back as they would locally.
      assert {:error, %Error{category: :timeout, details: %{reason: :idle_timeout}}} =
               Snakepit.execute_stream("then_silence", %{silence_ms: 5_000}, fn _ -> :ok end,
                 pool: :stream_remote,
                 idle_timeout: 200
               )

      assert {:error, %Error{category: :validation, details: %{reason: :unknown_tool}}} =
               Snakepit.execute_stream("no_such_tool", %{}, fn _ -> :ok end, pool: :stream_remote)

      assert {:error, %Error{details: %{reason: :unknown_pool}}} =
               Snakepit.execute_stream("many_chunks", %{}, fn _ -> :ok end,
                 pool: :stream_remote,
                 node: node()
               )

      :ok = :peer.stop(peer)
    end

    test "a slow callback here slows the generator there: each side holds a window" do
      {peer, node} = start_peer()
      [os_pid] = start_pool(node, name: :stream_bulk, adapter: @bulk)
      assert Wait.until(fn -> match?([%{node: ^node}], members(:stream_bulk)) end, 5_000)
      me = self()
      mib = 1024 * 1024
      chunks = 256
      baseline = :erpc.call(node, :erlang, :memory, [:binary])
      sampler = Task.async(fn -> sample_peak(node, 0) end)

      # 256 MiB in 1 MiB chunks into a callback that sleeps on each: without
      # flow control across the nodes they would pile up here or there.
      :ok =
        Snakepit.execute_stream(
          "stream_bytes",
          %{count: chunks, size: mib},
          fn chunk ->
            if byte_size(chunk["data"] || "") == mib, do: send(me, :chunk)
            Process.sleep(4)
            send(me, {:waiting, Mailbox.waiting_payload()})
          end,
          pool: :stream_bulk,
          raw_binaries: true
        )

      send(sampler.pid, :stop)
      peer_peak = Task.await(sampler)
      assert Mailbox.count(:chunk) == chunks
      waiting_peak = Mailbox.peak(:waiting)

      # The NIF there sends at most 16 MiB of payload ahead of the callback.
      assert waiting_peak <= 16 * mib, "#{div(waiting_peak, mib)} MiB waited in the mailbox"
      assert peer_peak - baseline < 64 * mib, "#{div(peer_peak - baseline, mib)} MiB on the peer"
      status = File.read!("/proc/#{os_pid}/status")
      [_, kib] = Regex.run(~r/VmHWM:\s+(\d+) kB/, status)
      assert String.to_integer(kib) * 1024 < 300 * mib, "worker peak RSS #{kib} KiB"
      :ok = :peer.stop(peer)
    end

    test "duplex: the inputs are read here, lazily; outputs come back in order" do
      {peer, node} = start_peer()
      start_pool(node, name: :duplex_remote)
      assert Wait.until(fn -> match?([%{node: ^node}], members(:duplex_remote)) end, 5_000)
      me = self()

      inputs = Stream.map(1..300, fn i -> send(me, {:read_on, node()}) && i end)

      assert :ok =
               Snakepit.execute_duplex(
                 "echo_inputs",
                 %{},
                 inputs,
                 &send(me, {:output, &1}),
                 pool: :duplex_remote
               )

      assert requests(node, :duplex_remote) == 1
      assert Mailbox.count({:read_on, node()}) == 300
      outputs = for _ <- 0..300, do: assert_received({:output, chunk}) && chunk

      assert Enum.map(Enum.drop(outputs, -1), &{&1["index"], &1["input"]}) ==
               Enum.map(1..300, &{&1 - 1, &1})

      # An infinite source, read only as far as the tool gets.
      infinite = Stream.iterate(0, &(&1 + 1)) |> Stream.each(&send(me, {:pulled, &1}))

      assert :ok =
               Snakepit.execute_duplex(
                 "echo_inputs",
                 %{},
                 infinite,
                 fn
                   %{"index" => 50} -> :halt
                   _ -> :ok
                 end,
                 pool: :duplex_remote
               )

      last = Mailbox.peak(:pulled)
      assert last >= 50 and last < 10_000

      # An input that cannot cross to Python; a source that raises.
      assert {:error, %Error{category: :validation, details: %{path: ~s(input["bad"])}}} =
               Snakepit.execute_duplex(
                 "echo_inputs",
                 %{},
                 [%{"ok" => 1}, %{"bad" => self()}],
                 fn _ -> :ok end,
                 pool: :duplex_remote
               )

      raising = Stream.map(1..10, fn i -> if i == 5, do: raise("bad input source"), else: i end)

      assert_raise RuntimeError, "bad input source", fn ->
        Snakepit.execute_duplex("echo_inputs", %{}, raising, fn _ -> :ok end, pool: :duplex_remote)
      end

      # The worker is free again after each of those.
      assert {:ok, %{"sum" => 6}} = sum_remote(:duplex_remote)
      :ok = :peer.stop(peer)
    end
  end

  describe "sessions across nodes" do
    test "a session's calls reach its worker on the owner node, from any node" do
      {peer, node} = start_peer()
      pool = :session_shared
      Pools.start!(@showcase, name: pool, size: 2)
      start_pool(node, name: pool, size: 2)
      assert Wait.until(fn -> Enum.map(members(pool), & &1.workers) == [2, 2] end, 5_000)
      ids = for i <- 1..6, do: "user_#{i}_#{System.unique_integer([:positive])}"

      for {id, value} <- Enum.with_index(ids) do
        # Set from this node, read from the other, both ways round.
        {:ok, %{"value" => ^value}} =
          Snakepit.execute_in_session(id, "set_counter", %{value: value}, pool: pool)

        assert {:ok, %{"value" => ^value}} =
                 :erpc.call(node, Snakepit, :execute_in_session, [
                   id,
                   "get_counter",
                   %{},
                   [pool: pool]
                 ])

        assert {:ok, %{"value" => ^value}} =
                 Snakepit.execute_in_session(id, "get_counter", %{}, pool: pool)
      end

      # Each session lives in one store: its owner's.
      here = MapSet.new(Session.list(), & &1.id)
      there = MapSet.new(:erpc.call(node, Session, :list, []), & &1.id)
      assert MapSet.disjoint?(here, there)
      assert MapSet.subset?(MapSet.new(ids), MapSet.union(here, there))

      # Streams in a session go there too.
      [id | _] = ids
      owner = if MapSet.member?(here, id), do: node(), else: node
      before = requests(owner, pool)
      me = self()

      assert :ok =
               Snakepit.execute_in_session_stream(
                 id,
                 "stream_numbers",
                 %{count: 3},
                 &send(me, {:number, &1["number"]}),
                 pool: pool
               )

      assert requests(owner, pool) == before + 1
      assert for(_ <- 1..4, do: assert_received({:number, n}) && n) == [0, 1, 2, nil]
      :ok = :peer.stop(peer)
    end

    test "variables written on any node reach the owner's Python watcher and Elixir watchers anywhere" do
      {peer, node} = start_peer()
      pool = :session_watch
      start_pool(node, name: pool, adapter: @session_tools)
      assert Wait.until(fn -> match?([%{node: ^node}], members(pool)) end, 5_000)
      id = "watched_#{System.unique_integer([:positive])}"
      me = self()

      # Created by its first call, on the only node serving the pool.
      assert {:ok, _} =
               Snakepit.execute_in_session(
                 id,
                 "register_var",
                 %{name: "x", type: "integer", value: 0},
                 pool: pool
               )

      assert Session.list() |> Enum.all?(&(&1.id != id))
      assert {:ok, %Session.Variable{value: 0}} = Session.get_variable(id, "x")

      # An Elixir watcher here, on a session stored there.
      {:ok, watch} = Session.watch(id, ["x"])
      ref = watch.ref
      assert_receive {:snakepit_variable, ^ref, %Session.Update{value: 0}}, 5_000

      python =
        Task.async(fn ->
          Snakepit.execute_in_session_stream(
            id,
            "watch_var",
            %{name: "x", until: 3},
            &send(me, {:python_saw, &1}),
            pool: pool
          )
        end)

      assert_receive {:python_saw, %{"value" => 0, "initial" => true}}, 10_000
      assert {:ok, %{version: 2}} = Session.set_variable(id, "x", 1)
      assert {:ok, %{version: 3}} = :erpc.call(node, Session, :set_variable, [id, "x", 2])
      assert {:ok, [%{version: 4}]} = Session.set_variables(id, %{"x" => 3})
      assert :ok = Task.await(python, 10_000)

      saw = for _ <- 1..3, do: assert_received({:python_saw, %{"value" => v}}) && v
      assert saw == [1, 2, 3]

      for value <- 1..3 do
        assert_receive {:snakepit_variable, ^ref, %Session.Update{value: ^value}}, 5_000
      end

      assert {:ok, %{watcher_count: 1}} = Session.get(id)
      :ok = Session.unwatch(watch)
      assert {:ok, _} = Session.set_variable(id, "x", 4)
      refute_receive {:snakepit_variable, ^ref, _}, 100
      assert {:ok, %{watcher_count: 0}} = Session.get(id)

      # A watcher that exits takes its watch there with it.
      watcher =
        spawn(fn ->
          {:ok, _} = Session.watch(id, ["x"])
          send(me, :watching)
          Process.sleep(:infinity)
        end)

      assert_receive :watching, 5_000
      assert {:ok, %{watcher_count: 1}} = Session.get(id)
      Process.exit(watcher, :kill)
      assert Wait.until(fn -> match?({:ok, %{watcher_count: 0}}, Session.get(id)) end, 5_000)

      # Deleted from here, gone there.
      assert :ok = Session.delete(id)

      assert {:error, %Error{details: %{reason: :session_not_found}}} =
               Session.get_variable(id, "x")

      assert :erpc.call(node, Session, :list, []) |> Enum.all?(&(&1.id != id))
      :ok = :peer.stop(peer)
    end

    test "when the owner node goes, :hint sessions start afresh elsewhere, strict ones are unavailable" do
      {_peer, node} = start_peer()
      pool = :session_loss
      Pools.start!(@showcase, name: pool)
      os_pids = start_pool(node, name: pool)
      assert Wait.until(fn -> length(members(pool)) == 2 end, 5_000)
      hint = "hint_#{System.unique_integer([:positive])}"
      strict = "strict_#{System.unique_integer([:positive])}"

      # Both started on the peer (pinned there), then used from here.
      for id <- [hint, strict] do
        assert {:ok, _} =
                 Snakepit.execute_in_session(id, "set_counter", %{value: 7},
                   pool: pool,
                   node: node
                 )

        assert {:ok, %{"value" => 7}} =
                 Snakepit.execute_in_session(id, "get_counter", %{}, pool: pool)
      end

      vm = :erpc.call(node, System, :pid, [])
      System.cmd("kill", ["-KILL", vm])
      assert Wait.until(fn -> length(members(pool)) == 1 end, 5_000)

      # Fresh Python state on a live node (this one).
      assert {:ok, %{"value" => nil}} =
               Snakepit.execute_in_session(hint, "get_counter", %{}, pool: pool)

      assert {:ok, %{"value" => nil}} =
               Snakepit.execute_in_session(hint, "get_counter", %{}, pool: pool)

      assert Enum.any?(Session.list(), &(&1.id == hint))

      assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
               Snakepit.execute_in_session(strict, "get_counter", %{},
                 pool: pool,
                 affinity: :strict_queue
               )

      # Its variables went with its owner.
      assert {:error, %Error{details: %{reason: :session_not_found}}} =
               Session.list_variables(strict)

      # Deleting it lets it start again.
      :ok = Session.delete(strict)

      assert {:ok, %{"value" => nil}} =
               Snakepit.execute_in_session(strict, "get_counter", %{},
                 pool: pool,
                 affinity: :strict_fail_fast
               )

      assert Wait.until(fn -> not Enum.any?(os_pids, &OsProcesses.alive?/1) end, 10_000)
    end
  end

  test "the universal call: refs and stream refs of another node's pool, released with their process" do
    {peer, node} = start_peer()
    pool = :objects_remote
    start_pool(node, name: pool)
    assert Wait.until(fn -> match?([%{node: ^node}], members(pool)) end, 5_000)

    assert {:ok, 4.0} = Snakepit.call("math", "sqrt", [16], pool: pool)
    assert requests(node, pool) == 1

    {:ok, counter} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
    assert %Snakepit.Ref{node: ^node, type_name: "Counter"} = counter
    assert {:ok, 1} = Snakepit.method(counter, "increment", [])
    assert {:ok, 3} = Snakepit.method(counter, "increment", [], kwargs: %{by: 2})
    assert {:ok, 3} = Snakepit.attr(counter, "value")

    {:ok, range} = Snakepit.call("builtins", "range", [100], pool: pool)
    assert Enum.take(range, 3) == [0, 1, 2]
    assert Enum.count(range) == 100
    # A call whose arguments hold a ref runs on the ref's worker.
    assert {:ok, list} = Snakepit.call("builtins", "list", [range])
    assert list == Enum.to_list(0..99)

    {:ok, endless} = Snakepit.call("objects_fixtures", "endless", [], pool: pool)
    assert %Snakepit.StreamRef{node: ^node} = endless
    assert Enum.take(endless, 1_000) == Enum.to_list(0..999)

    # The refs a process makes go when it exits.
    {:ok, %{"live" => before}} = Snakepit.Objects.live_refs(counter)

    task =
      Task.async(fn ->
        for _ <- 1..3, do: {:ok, _} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool)
        {:ok, gen} = Snakepit.call("objects_fixtures", "endless", [], pool: pool)
        Enum.take(gen, 2)
      end)

    assert Task.await(task) == [0, 1]

    assert Wait.until(
             fn -> match?({:ok, %{"live" => ^before}}, Snakepit.Objects.live_refs(counter)) end,
             5_000
           )

    # A session's refs live on its owner, and go when it is deleted from here.
    sid = "objects_#{System.unique_integer([:positive])}"
    {:ok, held} = Snakepit.call("objects_fixtures", "Counter", [], pool: pool, session_id: sid)
    assert %Snakepit.Ref{node: ^node, session_id: ^sid} = held
    assert Enum.any?(:erpc.call(node, Session, :list, []), &(&1.id == sid))
    assert {:ok, 1} = Snakepit.method(held, "increment", [])
    :ok = Session.delete(sid)

    assert Wait.until(
             fn -> match?({:ok, %{"live" => ^before}}, Snakepit.Objects.live_refs(counter)) end,
             5_000
           )

    # Objects of a node that went away: an error, not a hang.
    :ok = :peer.stop(peer)

    assert {:error, %Error{category: :transport, details: %{reason: :node_down}}} =
             Snakepit.method(counter, "increment", [])

    assert_raise Error, ~r/went down/, fn -> Enum.take(range, 1) end
  end

  test "a node that stops fails only the calls running on it, at once" do
    {peer1, node1} = start_peer()
    {peer2, node2} = start_peer()
    os_pids = start_pool(node1, name: :loss_pool)
    start_pool(node2, name: :loss_pool)
    assert Wait.until(fn -> length(members(:loss_pool)) == 2 end, 5_000)
    test = self()

    for node <- [node1, node2] do
      spawn(fn ->
        params = %{steps: 20, step_ms: 100}
        result = Snakepit.execute("slow_steps", params, pool: :loss_pool, node: node)
        send(test, {:result, node, result, System.monotonic_time(:millisecond)})
      end)
    end

    assert Wait.until(
             fn ->
               Enum.all?([node1, node2], fn node ->
                 match?(
                   {:ok, %{in_flight: 1}},
                   :erpc.call(node, Snakepit.Pool, :stats, [:loss_pool])
                 )
               end)
             end,
             10_000
           )

    stopped_at = System.monotonic_time(:millisecond)
    :ok = :peer.stop(peer1)

    assert_receive {:result, ^node1,
                    {:error, %Error{category: :transport, details: %{reason: :node_down}}}, at},
                   5_000

    # Promptly: well before the 2 s the tool would have taken.
    assert at - stopped_at < 1_500
    assert_receive {:result, ^node2, {:ok, %{"steps" => 20}}, _}, 10_000
    assert Wait.until(fn -> not Enum.any?(os_pids, &OsProcesses.alive?/1) end, 10_000)
    assert {:ok, 3} = Snakepit.execute("add", %{a: 1, b: 2}, pool: :loss_pool)
    :ok = :peer.stop(peer2)
  end

  defp sum_remote(pool) do
    me = self()

    with :ok <-
           Snakepit.execute_duplex("sum_inputs", %{}, [1, 2, 3], &send(me, {:sum, &1}), pool: pool) do
      assert_received {:sum, %{"sum" => sum}}
      {:ok, %{"sum" => sum}}
    end
  end

  # The peer's binary memory, polled until told to stop; returns its peak.
  defp sample_peak(node, peak) do
    peak = max(peak, :erpc.call(node, :erlang, :memory, [:binary]))

    receive do
      :stop -> peak
    after
      10 -> sample_peak(node, peak)
    end
  end
end
