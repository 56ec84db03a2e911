defmodule Snakepit.BridgeTest do
  # Registers Elixir tools, which are node-wide: not async.
  use ExUnit.Case, async: false

  import Bitwise, only: [<<<: 2]

  alias Snakepit.{Bridge, ElixirTools, Error, Session}
  alias Snakepit.Session.{Update, Variable}
  alias Snakepit.Test.Pools

  setup_all do
    # One worker pool for the whole module, outside any test's supervisor.
    name = :"bridge_test_pool_#{System.unique_integer([:positive])}"

    {:ok, pid} =
      Snakepit.Pool.start_link(
        name: name,
        size: 1,
        adapter: "session_adapters.SessionToolsAdapter",
        python_path: [Pools.adapters_dir()]
      )

    Process.unlink(pid)
    on_exit(fn -> Snakepit.Pool.stop(name) end)
    %{pool: name}
  end

  setup do
    id = "bridge_test_#{System.unique_integer([:positive])}"
    on_exit(fn -> Session.delete(id) end)
    %{session: id}
  end

  defp run(pool, session, tool, args),
    do: Snakepit.execute_in_session(session, tool, args, pool: pool, timeout: 10_000)

  test "the bridge listens on loopback with the node's token" do
    assert "127.0.0.1:" <> port = Bridge.address()
    assert String.to_integer(port) > 0
    assert byte_size(Bridge.token()) == 64
  end

  test "after a crash of the bridge process, workers still reach the bridge", ctx do
    address = Bridge.address()
    {:ok, _} = Session.create(ctx.session)
    {:ok, _} = Session.register_variable(ctx.session, "x", :integer, 7)
    old = Process.whereis(Bridge)
    ref = Process.monitor(old)
    Process.exit(old, :kill)
    assert_receive {:DOWN, ^ref, :process, ^old, :killed}

    assert Snakepit.Test.Wait.until(
             fn -> is_pid(Process.whereis(Bridge)) and Process.whereis(Bridge) != old end,
             2_000
           )

    assert Bridge.address() == address
    assert {:ok, 7} = run(ctx.pool, ctx.session, "get_var", %{name: "x"})
    :ok = ElixirTools.register("test_after_restart", fn _ -> {:ok, "still here"} end)

    assert {:ok, "still here"} =
             run(ctx.pool, ctx.session, "call_elixir", %{tool: "test_after_restart", args: %{}})
  after
    ElixirTools.unregister("test_after_restart")
  end

  test "a Python tool sets a variable and an Elixir watcher receives it", ctx do
    {:ok, _} = Session.create(ctx.session)
    {:ok, _} = Session.register_variable(ctx.session, "progress", :integer, 0)
    {:ok, watch} = Session.watch(ctx.session, ["progress"], include_initial: false)
    ref = watch.ref

    assert {:ok, %{"version" => 2}} =
             run(ctx.pool, ctx.session, "set_var", %{
               name: "progress",
               value: 42,
               metadata: %{"step" => "a"}
             })

    assert_receive {:snakepit_variable, ^ref,
                    %Update{
                      type: :value_change,
                      value: 42,
                      old_value: 0,
                      source: :python,
                      metadata: %{"step" => "a"}
                    }},
                   5_000
  end

  test "Elixir sets and a Python tool reads the new value, from sync and async code", ctx do
    {:ok, _} = Session.create(ctx.session)
    {:ok, _} = Session.register_variable(ctx.session, "temperature", :float, 0.5)
    assert {:ok, 0.5} = run(ctx.pool, ctx.session, "get_var", %{name: "temperature"})

    {:ok, _} = Session.set_variable(ctx.session, "temperature", 0.9)
    assert {:ok, 0.9} = run(ctx.pool, ctx.session, "get_var", %{name: "temperature"})
    assert {:ok, 0.9} = run(ctx.pool, ctx.session, "aget_var", %{name: "temperature"})

    assert {:ok, _} = run(ctx.pool, ctx.session, "aset_var", %{name: "temperature", value: 1.1})

    assert {:ok, %Variable{value: 1.1, source: :python, version: 3}} =
             Session.get_variable(ctx.session, "temperature")
  end

  test "a Python tool registers, lists, updates atomically and deletes", ctx do
    assert {:ok, _} =
             run(ctx.pool, ctx.session, "register_var", %{
               name: "lr",
               type: "float",
               value: 0.01,
               constraints: %{"min" => 0.0, "max" => 1.0}
             })

    assert {:ok, _} =
             run(ctx.pool, ctx.session, "register_var", %{
               name: "epochs",
               type: "integer",
               value: 1
             })

    assert {:ok, ["epochs", "lr"]} = run(ctx.pool, ctx.session, "list_vars", %{pattern: "*"})

    # One bad value: nothing changes, and Python saw the error.
    assert {:error, %Error{category: :python} = error} =
             run(ctx.pool, ctx.session, "update_vars", %{values: %{"lr" => 5.0, "epochs" => 2}})

    assert error.python_type == "InvalidVariable"
    assert {:ok, %Variable{value: 1, version: 1}} = Session.get_variable(ctx.session, "epochs")

    assert {:ok, _} =
             run(ctx.pool, ctx.session, "update_vars", %{values: %{"lr" => 0.5, "epochs" => 2}})

    assert {:ok, %Variable{value: 0.5, source: :python}} = Session.get_variable(ctx.session, "lr")
    assert {:ok, _} = run(ctx.pool, ctx.session, "delete_var", %{name: "lr"})

    assert {:error, %Error{details: %{reason: :variable_not_found}}} =
             Session.get_variable(ctx.session, "lr")
  end

  test "a version conflict reaches the Python tool as VersionConflict", ctx do
    {:ok, _} = Session.create(ctx.session)
    {:ok, _} = Session.register_variable(ctx.session, "x", :integer, 0)
    {:ok, _} = Session.set_variable(ctx.session, "x", 1)

    assert {:error, %Error{category: :python, python_type: "VersionConflict"}} =
             run(ctx.pool, ctx.session, "set_var", %{name: "x", value: 5, expected_version: 1})

    assert {:ok, %Variable{value: 1, version: 2}} = Session.get_variable(ctx.session, "x")
  end

  test "pool calls in a session create it in the store; deleting it drops the pool's binding",
       ctx do
    assert {:ok, _} = run(ctx.pool, ctx.session, "list_vars", %{pattern: "*"})
    assert {:ok, %Session.Info{id: id}} = Session.get(ctx.session)
    assert id == ctx.session

    [{_pid, info}] = Registry.lookup(Snakepit.PoolRegistry, ctx.pool)
    assert [{_, _, _}] = :ets.lookup(info.sessions, ctx.session)
    :ok = Session.delete(ctx.session)

    assert Snakepit.Test.Wait.until(
             fn -> :ets.lookup(info.sessions, ctx.session) == [] end,
             2_000
           )
  end

  describe "Elixir tools" do
    setup do
      on_exit(fn ->
        for {name, _} <- ElixirTools.list(),
            String.starts_with?(name, "test_"),
            do: ElixirTools.unregister(name)
      end)
    end

    test "Python calls an Elixir tool and gets its result", ctx do
      test = self()

      :ok =
        ElixirTools.register(
          "test_add",
          fn %{"a" => a, "b" => b}, context ->
            send(test, {:context, context})
            {:ok, %{"sum" => a + b}}
          end,
          description: "Adds two numbers"
        )

      assert {:ok, %{"sum" => 5}} =
               run(ctx.pool, ctx.session, "call_elixir", %{tool: "test_add", args: %{a: 2, b: 3}})

      session = ctx.session
      assert_receive {:context, %{session_id: ^session}}
    end

    test "an Elixir error comes back as a Python exception with the Elixir message", ctx do
      :ok = ElixirTools.register("test_fail", fn _args -> {:error, "no such user: 7"} end)
      :ok = ElixirTools.register("test_raise", fn _args -> raise ArgumentError, "bad id" end)

      assert {:error, %Error{category: :python, python_type: "ElixirToolError", message: message}} =
               run(ctx.pool, ctx.session, "call_elixir", %{tool: "test_fail", args: %{}})

      assert message =~ "no such user: 7"

      assert {:error, %Error{python_type: "ElixirToolError", message: message}} =
               run(ctx.pool, ctx.session, "call_elixir", %{tool: "test_raise", args: %{}})

      assert message =~ "bad id"

      # A subclass of ElixirToolError.
      assert {:error, %Error{python_type: "ElixirToolNotFound", message: message}} =
               run(ctx.pool, ctx.session, "call_elixir", %{tool: "test_missing", args: %{}})

      assert message =~ "test_missing"
    end
  end

  describe "bridges of their own" do
    # Creates sessions through the bridge at `address` from a Python program
    # outside the pools; one line per session, "ok <id>" or "error <reason>".
    defp create_from_python(address, ids) do
      script = Path.join(Pools.adapters_dir(), "bridge_client.py")

      env = [
        {"PYTHONPATH", Snakepit.Python.package_dir()},
        {"SNAKEPIT_TOKEN", Bridge.token()}
      ]

      {output, 0} = System.cmd("python3", [script, address | ids], env: env)
      String.split(output, "\n", trim: true)
    end

    test "a second bridge in the VM has its own server, store and limits", ctx do
      name = :"test_bridge_#{System.unique_integer([:positive])}"
      start_supervised!({Bridge, name: name, max_sessions: 2})
      small = Bridge.address(name)
      assert "127.0.0.1:" <> _ = small
      assert small != Bridge.address()

      ids = for i <- 1..3, do: "#{ctx.session}_#{i}"
      [a, b, c] = ids

      assert create_from_python(small, ids) == [
               "ok #{a}",
               "ok #{b}",
               "error session_quota_exceeded"
             ]

      # The same store from Elixir: still full.
      assert {:error, {"session_quota_exceeded", _}} =
               Snakepit.Native.session_create(Bridge.store!(name), c, 0, %{})

      # The application's bridge keeps its own limits and knows none of them.
      assert {:error, %Error{details: %{reason: :session_not_found}}} = Session.get(a)
      assert create_from_python(Bridge.address(), ids) == Enum.map(ids, &"ok #{&1}")
      on_exit(fn -> Enum.each(ids, &Session.delete/1) end)

      :ok = stop_supervised(name)
      assert_raise ArgumentError, fn -> Bridge.address(name) end
      assert {:ok, %Session.Info{}} = Session.get(c)
    end

    test "a bad configuration is refused before anything starts" do
      name = :"test_bridge_#{System.unique_integer([:positive])}"

      for {opts, expected} <- [
            {[max_sessions: 0], ":max_sessions must be a positive integer"},
            {[session_ttl: 1 <<< 32], ":session_ttl must be a positive integer of at most"},
            {[watch_buffer: 2_000_000], ":watch_buffer must be a positive integer of at most"},
            {[address: "0.0.0.0:0"], "is beyond loopback: the bridge serves it over TLS only"},
            {[address: "localhost"], ~s(:address must be "ip:port")},
            {[address: <<255>> <> ":0"], ~s(:address must be "ip:port")},
            {[address: "[127.0.0.1]:0"], ~s(:address must be "ip:port")},
            {[address: "::1:0"], ~s(:address must be "ip:port")},
            {[tls: [certfile: "/nonexistent/cert.pem", keyfile: "/nonexistent/key.pem"]],
             "names files that do not exist"},
            {[tls: [certfile: "a"]], ":tls must be [certfile: path, keyfile: path]"},
            {[max_sesions: 2], "[:max_sesions]"}
          ] do
        assert {:error, %Error{category: :validation} = error} =
                 Bridge.start_link([name: name] ++ opts)

        assert error.details.reason == :invalid_argument
        assert error.message =~ expected
        assert Process.whereis(name) == nil
      end
    end

    test "options that are not a keyword list are refused, not raised" do
      assert {:error, %Error{category: :validation}} = Bridge.start_link(:not_a_list)
    end
  end
end
