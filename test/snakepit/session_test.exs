defmodule Snakepit.SessionTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Session}
  alias Snakepit.Session.{Info, Update, Variable}

  doctest Snakepit.Session

  defp new_session(opts \\ []) do
    id = "session_test_#{System.unique_integer([:positive])}"
    {:ok, %Info{id: ^id}} = Session.create(id, opts)
    on_exit(fn -> Session.delete(id) end)
    id
  end

  defp reason({:error, %Error{category: :validation, details: %{reason: reason}}}), do: reason

  describe "sessions" do
    test "create is idempotent and keeps the first metadata" do
      id = "session_test_idem_#{System.unique_integer([:positive])}"
      on_exit(fn -> Session.delete(id) end)
      assert {:ok, first} = Session.create(id, metadata: %{owner: "a"}, ttl: 60)
      assert first.metadata == %{"owner" => "a"}
      assert first.ttl == 60
      assert {:ok, again} = Session.create(id, metadata: %{owner: "b"})
      assert again.metadata == %{"owner" => "a"}
      assert again.created_at == first.created_at
      assert DateTime.compare(again.last_used_at, first.last_used_at) in [:gt, :eq]
      assert DateTime.diff(first.expires_at, first.last_used_at) == 60
    end

    test "a generated id, get, touch, list and delete" do
      assert {:ok, %Info{id: id}} = Session.create()
      assert String.starts_with?(id, "session_")
      assert {:ok, %Info{id: ^id, variable_count: 0}} = Session.get(id)
      assert {:ok, %Info{id: ^id}} = Session.touch(id)
      assert id in Enum.map(Session.list(), & &1.id)
      assert :ok = Session.delete(id)
      assert reason(Session.get(id)) == :session_not_found
      assert :ok = Session.delete(id)
    end

    test "timestamps are current UTC DateTimes" do
      id = new_session()
      {:ok, info} = Session.get(id)
      assert abs(DateTime.diff(info.created_at, DateTime.utc_now(), :second)) <= 5
      assert info.created_at.time_zone == "Etc/UTC"
    end

    test "bad input is refused before reaching the store" do
      assert reason(Session.create("")) == :invalid_argument
      assert reason(Session.create("x", ttl: 0)) == :invalid_argument
      assert reason(Session.create("x", metadata: %{a: 1})) == :invalid_argument
      assert reason(Session.get(:nope)) == :invalid_argument
    end

    test "an expired session ends its watches and its variables are gone" do
      id = new_session(ttl: 1)
      {:ok, _} = Session.register_variable(id, "x", :integer, 1)
      {:ok, watch} = Session.watch(id, ["x"], include_initial: false)
      ref = watch.ref
      assert_receive {:snakepit_watch_ended, ^ref, :expired}, 5_000
      assert reason(Session.get_variable(id, "x")) == :session_not_found
    end
  end

  describe "variables" do
    test "register, get by name and id, set, list, delete" do
      id = new_session()

      assert {:ok, %Variable{id: var_id, version: 1, source: :elixir, type: :integer} = var} =
               Session.register_variable(id, "count", :integer, 1,
                 constraints: %{min: 0},
                 metadata: %{unit: "items"}
               )

      assert var.constraints == %{"min" => 0}
      assert var.metadata == %{"unit" => "items"}
      assert {:ok, %Variable{value: 1}} = Session.get_variable(id, "count")
      assert {:ok, %Variable{name: "count"}} = Session.get_variable(id, var_id)

      assert {:ok, %Variable{value: 5, version: 2, update_metadata: %{"why" => "test"}}} =
               Session.set_variable(id, :count, 5, metadata: %{why: "test"})

      {:ok, _} = Session.register_variable(id, "label", :string, "hi")

      assert {:ok, [%Variable{name: "count"}, %Variable{name: "label"}]} =
               Session.list_variables(id)

      assert {:ok, [%Variable{name: "label"}]} = Session.list_variables(id, "la*")

      assert {:ok, found} = Session.get_variables(id, ["count", "nope", var_id])
      assert Map.keys(found) |> Enum.sort() == Enum.sort(["count", var_id])

      assert :ok = Session.delete_variable(id, "label")
      assert reason(Session.get_variable(id, "label")) == :variable_not_found
      assert reason(Session.register_variable(id, "count", :integer, 1)) == :variable_exists
    end

    test "a version conflict writes nothing" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "x", :float, 1.0)
      {:ok, %Variable{version: 2}} = Session.set_variable(id, "x", 2.0, expected_version: 1)

      assert {:error, %Error{details: %{reason: :version_conflict}} = error} =
               Session.set_variable(id, "x", 3.0, expected_version: 1)

      assert error.message =~ "version 2"
      assert {:ok, %Variable{value: 2.0, version: 2}} = Session.get_variable(id, "x")
    end

    test "an atomic batch with one bad value changes nothing" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "a", :integer, 1)
      {:ok, _} = Session.register_variable(id, "b", :integer, 1, constraints: %{max: 10})
      {:ok, watch} = Session.watch(id, ["a", "b"], include_initial: false)

      assert reason(Session.set_variables(id, %{"a" => 2, "b" => 11})) == :invalid_value

      assert {:ok, %{"a" => %{value: 1, version: 1}, "b" => %{value: 1, version: 1}}} =
               Session.get_variables(id, ["a", "b"])

      assert {:ok, [%Variable{value: 2, version: 2}, %Variable{value: 3, version: 2}]} =
               Session.set_variables(id, [{"a", 2}, {"b", 3, expected_version: 1}])

      ref = watch.ref
      assert_receive {:snakepit_variable, ^ref, %Update{name: "a", value: 2}}
      assert_receive {:snakepit_variable, ^ref, %Update{name: "b", value: 3}}
      refute_received {:snakepit_variable, ^ref, _}
    end

    test "each type enforces its constraints on every write" do
      id = new_session()

      cases = [
        {:float, 0.5, %{min: 0.0, max: 1.0}, 0.75, 1.5},
        {:integer, 3, %{min: 1, max: 5}, 4, 2.5},
        {:string, "abc", %{min_length: 2, max_length: 4}, "abcd", "a"},
        {:boolean, true, %{}, false, "yes"},
        {:choice, "red", %{choices: ["red", "green"]}, "green", "blue"},
        {:module, "Predict", %{choices: ["Predict", "ChainOfThought"]}, "ChainOfThought", "X"},
        {:embedding, [0.1, 0.2, 0.3], %{dimensions: 3}, [1, 2, 3], [0.1, 0.2]},
        {:tensor, %{shape: [2, 2], data: [1, 2, 3, 4]}, %{shape: [2, 2]},
         %{shape: [2, 2], data: [5, 6, 7, 8]}, %{shape: [2, 2], data: [1, 2, 3]}},
        {:json, %{"any" => [1, "two"]}, %{}, [nil, true], {:not, :json, self()}}
      ]

      for {type, initial, constraints, good, bad} <- cases do
        name = "v_#{type}"

        assert {:ok, %Variable{type: ^type}} =
                 Session.register_variable(id, name, type, initial, constraints: constraints)

        assert {:ok, %Variable{version: 2}} = Session.set_variable(id, name, good)
        assert {:error, %Error{details: %{reason: why}}} = Session.set_variable(id, name, bad)
        assert why in [:invalid_value, :invalid_argument], "#{type} accepted #{inspect(bad)}"
        assert {:ok, %Variable{version: 2}} = Session.get_variable(id, name)
      end

      assert reason(Session.register_variable(id, "bad", :choice, "a")) == :invalid_constraints

      assert reason(Session.register_variable(id, "bad", :float, 1.0, constraints: %{colour: 1})) ==
               :invalid_constraints

      assert reason(Session.register_variable(id, "bad", "quaternion", 1)) == :invalid_type

      assert reason(Session.register_variable(id, "bad", :integer, 9, constraints: %{max: 5})) ==
               :invalid_value
    end
  end

  describe "watching from Elixir" do
    test "initial values first, then every change with its old value and source" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "t", :float, 20.0)
      {:ok, watch} = Session.watch(id, ["t"])
      ref = watch.ref

      assert_receive {:snakepit_variable, ^ref,
                      %Update{type: :initial_value, name: "t", value: 20.0, version: 1}}

      {:ok, _} = Session.set_variable(id, "t", 21.5, metadata: %{sensor: "a"})

      assert_receive {:snakepit_variable, ^ref,
                      %Update{
                        type: :value_change,
                        value: 21.5,
                        old_value: 20.0,
                        version: 2,
                        source: :elixir,
                        metadata: %{"sensor" => "a"},
                        timestamp: %DateTime{}
                      }}

      :ok = Session.delete_variable(id, "t")
      assert_receive {:snakepit_variable, ^ref, %Update{type: :deleted, name: "t"}}
    end

    test "unwatch stops the messages and the watcher count drops" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "x", :integer, 0)
      {:ok, watch} = Session.watch(id, ["x"], include_initial: false)
      assert {:ok, %Info{watcher_count: 1}} = Session.get(id)
      :ok = Session.unwatch(watch)
      {:ok, _} = Session.set_variable(id, "x", 1)
      ref = watch.ref
      refute_receive {:snakepit_variable, ^ref, _}, 50

      assert Snakepit.Test.Wait.until(
               fn -> match?({:ok, %{watcher_count: 0}}, Session.get(id)) end,
               1_000
             )
    end

    test "a watch stops when its process exits" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "x", :integer, 0)
      test = self()

      watcher =
        spawn(fn ->
          {:ok, _watch} = Session.watch(id, ["x"])
          send(test, :watching)
          Process.sleep(:infinity)
        end)

      assert_receive :watching
      assert {:ok, %Info{watcher_count: 1}} = Session.get(id)
      Process.exit(watcher, :kill)

      # The store drops the watcher when the forwarding task notices.
      assert Snakepit.Test.Wait.until(
               fn ->
                 {:ok, _} = Session.set_variable(id, "x", System.unique_integer())
                 match?({:ok, %{watcher_count: 0}}, Session.get(id))
               end,
               1_000
             )
    end

    test "deleting the session ends its watches" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "x", :integer, 0)
      {:ok, watch} = Session.watch(id, ["x"], include_initial: false)
      :ok = Session.delete(id)
      ref = watch.ref
      assert_receive {:snakepit_watch_ended, ^ref, :deleted}
    end

    test "watching nothing or an unknown variable is refused" do
      id = new_session()
      assert reason(Session.watch(id, [])) == :invalid_argument
      assert reason(Session.watch(id, ["ghost"])) == :variable_not_found
      assert reason(Session.watch("no_such_session", ["x"])) == :session_not_found
    end

    test "several writers: every watcher sees every version of every variable in order" do
      id = new_session()
      names = for i <- 1..4, do: "v#{i}"
      for name <- names, do: {:ok, _} = Session.register_variable(id, name, :integer, 0)
      per_writer = 2_000
      test = self()

      watchers =
        for _ <- 1..5 do
          spawn_link(fn ->
            {:ok, watch} = Session.watch(id, names, include_initial: false, buffer: 100_000)
            send(test, {:watching, self()})
            send(test, {:seen, self(), collect(watch.ref, length(names) * per_writer, %{})})
          end)
        end

      for pid <- watchers, do: assert_receive({:watching, ^pid})

      names
      |> Enum.map(fn name ->
        Task.async(fn ->
          for i <- 1..per_writer, do: {:ok, _} = Session.set_variable(id, name, i)
        end)
      end)
      |> Task.await_many(30_000)

      for pid <- watchers do
        assert_receive {:seen, ^pid, seen}, 30_000

        for name <- names,
            do: assert(Enum.reverse(seen[name]) == Enum.to_list(2..(per_writer + 1)))
      end
    end
  end

  defp collect(_ref, 0, seen), do: seen

  defp collect(ref, left, seen) do
    receive do
      {:snakepit_variable, ^ref, %Update{name: name, version: version}} ->
        collect(ref, left - 1, Map.update(seen, name, [version], &[version | &1]))
    after
      20_000 -> seen
    end
  end
end
