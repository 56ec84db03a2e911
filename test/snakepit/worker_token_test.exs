defmodule Snakepit.WorkerTokenTest do
  use ExUnit.Case, async: true

  alias Snakepit.Session
  alias Snakepit.Test.Pools

  setup do
    %{pool: Pools.start!("hardening_adapters.SpawnerAdapter")}
  end

  test "tools and their subprocesses do not see the node's token", %{pool: pool} do
    token = Snakepit.Bridge.token()
    assert is_binary(token) and token != ""

    assert {:ok, view} = Snakepit.execute("token_view", %{token: token}, pool: pool)

    assert view == %{
             "os_environ" => nil,
             "in_os_environ_values" => false,
             "in_subprocess_env" => false,
             "in_proc_environ" => false
           }
  end

  test "session variables still work from tools without the token in the environment",
       %{pool: pool} do
    session = "token-test-#{System.unique_integer([:positive])}"
    {:ok, _} = Session.create(session)
    {:ok, _} = Session.register_variable(session, "n", :integer, 0)

    assert {:ok, 42} =
             Snakepit.execute_in_session(session, "session_roundtrip", %{value: 42}, pool: pool)

    assert {:ok, %{value: 42}} = Session.get_variable(session, "n")

    assert {:ok, 7} =
             Snakepit.execute("connect_and_set", %{session_id: session, value: 7}, pool: pool)

    assert {:ok, %{value: 7}} = Session.get_variable(session, "m")
  end
end
