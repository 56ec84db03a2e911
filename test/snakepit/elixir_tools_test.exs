defmodule Snakepit.ElixirToolsTest do
  # Registers Elixir tools, which are node-wide: not async.
  use ExUnit.Case, async: false

  alias Snakepit.{ElixirTools, Error}
  alias Snakepit.Test.{Pools, Wait}

  setup do
    pool = Pools.start!("session_adapters.SessionToolsAdapter")
    session = "elixir_tools_test_#{System.unique_integer([:positive])}"

    on_exit(fn ->
      Snakepit.Session.delete(session)

      for {name, _} <- ElixirTools.list(),
          String.starts_with?(name, "tools_test_"),
          do: ElixirTools.unregister(name)
    end)

    %{pool: pool, session: session}
  end

  defp call(ctx, tool) do
    Snakepit.execute_in_session(ctx.session, "call_elixir", %{tool: tool, args: %{}},
      pool: ctx.pool,
      timeout: 10_000
    )
  end

  test "a tool call runs as a task of the tools' supervisor", ctx do
    :ok =
      ElixirTools.register("tools_test_where", fn _args ->
        {:ok, self() in Task.Supervisor.children(Snakepit.ElixirTools.Supervisor)}
      end)

    assert {:ok, true} = call(ctx, "tools_test_where")
  end

  test "a tool that exits or throws is reported to Python, and the next call works", ctx do
    :ok = ElixirTools.register("tools_test_exit", fn _args -> exit(:boom) end)
    :ok = ElixirTools.register("tools_test_throw", fn _args -> throw(:ball) end)
    :ok = ElixirTools.register("tools_test_ok", fn _args -> {:ok, "fine"} end)

    assert {:error, %Error{python_type: "ElixirToolError", message: message}} =
             call(ctx, "tools_test_exit")

    assert message =~ "boom"

    assert {:error, %Error{python_type: "ElixirToolError", message: message}} =
             call(ctx, "tools_test_throw")

    assert message =~ "ball"
    assert {:ok, "fine"} = call(ctx, "tools_test_ok")
  end

  test "a Python tool waiting on an Elixir tool stops when its caller goes away", ctx do
    test_pid = self()

    :ok =
      ElixirTools.register("tools_test_wait", fn _args ->
        send(test_pid, :elixir_tool_running)
        Process.sleep(60_000)
        {:ok, "late"}
      end)

    :ok = ElixirTools.register("tools_test_ok", fn _args -> {:ok, "fine"} end)
    marker = Path.join(System.tmp_dir!(), "snakepit_tools_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(marker) end)

    caller =
      Task.async(fn ->
        Snakepit.execute_in_session(
          ctx.session,
          "call_elixir",
          %{tool: "tools_test_wait", args: %{}, marker_path: marker},
          pool: ctx.pool,
          timeout: 60_000
        )
      end)

    assert_receive :elixir_tool_running, 10_000
    Task.shutdown(caller, :brutal_kill)

    # The cancel reaches the tool inside its blocking bridge call (which
    # would wait a minute), and the worker goes on serving.
    assert Wait.until(fn -> File.read(marker) == {:ok, "stopped: ToolCancelled"} end, 5_000)
    assert {:ok, "fine"} = call(ctx, "tools_test_ok")
  end
end
