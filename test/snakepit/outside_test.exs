defmodule Snakepit.OutsideTest do
  # Programs outside the pools running tools through the node's bridge
  # (`Execute`, `ExecuteStream`): a real separate process
  # (native/snakepit_core/examples/outside_call.rs, built by the test
  # command) over real gRPC, through the pools' own checkout.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{Pools, Wait}

  @client Path.expand("../../target/release/examples/outside_call", __DIR__)

  setup_all do
    unless File.exists?(@client) do
      flunk(
        "#{@client} is missing: cargo build --release -p snakepit_core --example outside_call " <>
          "(scripts/test.sh builds it)"
      )
    end

    %{pool: Pools.start!(Snakepit.Python.default_adapter(), size: 2)}
  end

  # Runs the outside client; its output lines, decoded (by Python's json,
  # through the universal call: the project has no JSON decoder in Elixir).
  defp outside(args) do
    {out, 0} = System.cmd(@client, [Snakepit.Bridge.address(), Snakepit.Bridge.token() | args])
    lines = String.split(out, "\n", trim: true)
    {:ok, decoded} = Snakepit.call("json", "loads", ["[" <> Enum.join(lines, ",") <> "]"])
    decoded
  end

  defp in_flight(pool) do
    {:ok, stats} = Snakepit.Pool.stats(pool)
    stats.in_flight
  end

  test "a tool's result, the tool's error, refusals before any worker", %{pool: pool} do
    [answer] = outside(["add", ~s({"a": 5, "b": 3}), "--pool", Atom.to_string(pool)])
    assert answer["result"] == 8
    assert answer["worker_id"] =~ Atom.to_string(pool)

    [answer] = outside(["error_demo", "{}", "--pool", Atom.to_string(pool)])
    assert %{"category" => "python", "type" => "ValueError"} = answer["error"]

    [answer] = outside(["add", "{not json", "--pool", Atom.to_string(pool)])
    assert %{"status" => "InvalidArgument", "reason" => "invalid_parameter"} = answer

    # A name that is no atom creates none.
    name = "no_pool_#{System.unique_integer([:positive])}"
    [answer] = outside(["add", ~s({"a": 1, "b": 2}), "--pool", name])
    assert %{"status" => "NotFound", "reason" => "unknown_pool"} = answer
    assert_raise ArgumentError, fn -> String.to_existing_atom(name) end

    [answer] =
      outside(["add", ~s({"a": 1}), "--pool", Atom.to_string(pool), "--affinity", "sticky"])

    assert %{"status" => "InvalidArgument"} = answer

    [answer] = outside(["no_such_tool", "{}", "--pool", Atom.to_string(pool)])
    assert answer["error"]["type"] == "UnknownTool"
    # The slot goes back as the call ends on the node, just after the answer.
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  test "a stream's chunks, in order, with the final metadata", %{pool: pool} do
    lines =
      outside(["stream_numbers", ~s({"count": 5}), "--stream", "--pool", Atom.to_string(pool)])

    assert Enum.map(Enum.take(lines, 5), & &1["data"]["number"]) == [0, 1, 2, 3, 4]
    final = List.last(lines)
    assert final["is_final"]
    assert final["metadata"]["synthetic_final"] == "true"
    assert final["metadata"]["tool_type"] == "remote"
    assert final["metadata"]["worker_id"] =~ Atom.to_string(pool)
    # The slot goes back as the call ends on the node, just after the answer.
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  test "a session set from outside is the session Elixir sees", %{pool: pool} do
    session = "outside_#{System.unique_integer([:positive])}"
    args = ["--pool", Atom.to_string(pool), "--session", session]
    [answer] = outside(["set_counter", ~s({"value": 41})] ++ args)
    assert answer["result"] == %{"value" => 41}

    assert {:ok, %{"value" => 41}} =
             Snakepit.execute_in_session(session, "get_counter", %{}, pool: pool)

    :ok = Snakepit.Session.delete(session)
  end

  test "a node started with a fixed token (SNAKEPIT_TOKEN) serves clients that know it" do
    token = "fixed-token-" <> Base.encode16(:crypto.strong_rand_bytes(12))

    script = """
    System.put_env("SNAKEPIT_TOKEN", #{inspect(token)})
    {:ok, _} = Application.ensure_all_started(:snakepit)
    IO.puts("NODE " <> Snakepit.Bridge.token() <> " " <> Snakepit.Bridge.address())
    Process.sleep(:infinity)
    """

    {port, vm_pid} = Snakepit.Test.OsProcesses.start_vm(script)
    on_exit(fn -> System.cmd("kill", ["-9", Integer.to_string(vm_pid)]) end)

    {seen, address} =
      receive do
        {^port, {:data, {:eol, "NODE " <> rest}}} ->
          [seen, address] = String.split(rest, " ")
          {seen, address}
      after
        60_000 -> flunk("the node did not start")
      end

    assert seen == token

    run = fn token ->
      {out, 0} = System.cmd(@client, [address, token, "add", ~s({"a": 1, "b": 2})])
      out
    end

    # Known token: the node runs the call on its default pool.
    assert run.(token) =~ ~s("result":3)
    assert run.(token <> "x") =~ ~s("status":"Unauthenticated")
    Port.close(port)
  end

  test "a fixed token is checked, and fixed only once" do
    for bad <- ["short", String.duplicate("x", 2000), "has space in it 123", 42] do
      assert {:error, %Snakepit.Error{details: %{option: :token}}} =
               Snakepit.Bridge.Config.new(token: bad)
    end

    assert :ok = Snakepit.Native.bridge_set_token(Snakepit.Bridge.token())
    assert {:error, _} = Snakepit.Native.bridge_set_token("another-token-of-the-node-0123")
  end

  test "a client that goes away while it waits for a worker leaves the pool's queue" do
    pool = Pools.start!(Snakepit.Python.default_adapter(), size: 1, concurrency: 1)
    # The only slot is busy for 20 s.
    busy =
      Task.async(fn ->
        Snakepit.execute("slow_steps", %{steps: 200, step_ms: 100}, pool: pool, timeout: 60_000)
      end)

    assert Wait.until(fn -> in_flight(pool) == 1 end, 5_000)

    port =
      Port.open({:spawn_executable, @client}, [
        :binary,
        args: [
          Snakepit.Bridge.address(),
          Snakepit.Bridge.token(),
          "add",
          ~s({"a": 1, "b": 2}),
          "--pool",
          Atom.to_string(pool),
          "--timeout-ms",
          "60000"
        ]
      ])

    {:os_pid, client_pid} = Port.info(port, :os_pid)
    assert Wait.until(fn -> queued(pool) == 1 end, 5_000)
    System.cmd("kill", ["-9", Integer.to_string(client_pid)])
    # Long before the busy call ends.
    assert Wait.until(fn -> queued(pool) == 0 end, 5_000)
    assert in_flight(pool) == 1
    Task.shutdown(busy, :brutal_kill)
  end

  test "a worker granted from the queue gives its slot back when the outside call ends" do
    pool = Pools.start!(Snakepit.Python.default_adapter(), size: 1, concurrency: 1)

    busy =
      Task.async(fn ->
        Snakepit.execute("slow_steps", %{steps: 20, step_ms: 100}, pool: pool, timeout: 60_000)
      end)

    assert Wait.until(fn -> in_flight(pool) == 1 end, 5_000)
    # Queued behind the busy call, then granted its slot by the pool: the
    # pool's own process made the lease, and may keep a reference to it
    # until its next garbage collection; the slot must not wait for that.
    outside_call =
      Task.async(fn -> outside(["add", ~s({"a": 1, "b": 2}), "--pool", Atom.to_string(pool)]) end)

    assert Wait.until(fn -> queued(pool) >= 1 end, 5_000)
    assert {:ok, %{"steps" => 20}} = Task.await(busy)
    assert [%{"result" => 3}] = Task.await(outside_call)
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  defp queued(pool) do
    {:ok, stats} = Snakepit.Pool.stats(pool)
    stats.queued
  end

  test "a client that goes away stops the Python generator and gives the worker back", %{
    pool: pool
  } do
    marker =
      Path.join(System.tmp_dir!(), "snakepit_outside_#{System.unique_integer([:positive])}")

    on_exit(fn -> File.rm(marker) end)
    parameters = ~s({"delay_ms": 20, "marker_path": #{inspect(marker)}})

    lines =
      outside([
        "infinite_stream",
        parameters,
        "--stream",
        "--take",
        "3",
        "--pool",
        Atom.to_string(pool)
      ])

    assert Enum.map(lines, & &1["data"]["tick"]) == [0, 1, 2]
    assert Wait.until(fn -> File.read(marker) == {:ok, "closed"} end, 5_000)
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end
end
