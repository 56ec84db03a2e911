defmodule Snakepit.HostileInputTest do
  # Every public entry point, with each argument (and each option) replaced by
  # a hostile value in turn: it answers `{:ok, _}`, `:ok` or
  # `{:error, %Snakepit.Error{}}`, and never raises.
  use ExUnit.Case, async: true

  alias Snakepit.{Error, Session}
  alias Snakepit.Test.{Pools, Terms}

  @option_keys [
    :pool,
    :node,
    :timeout,
    :session_id,
    :binary_parameters,
    :affinity,
    :checkout_timeout,
    :idle_timeout,
    :raw_binaries,
    :expected_version,
    :metadata,
    :ttl,
    :constraints,
    :include_initial,
    :buffer,
    :kwargs,
    :profile,
    :item_timeout,
    :stream_timeout,
    :prefetch
  ]

  defp acceptable?({:ok, _}), do: true
  defp acceptable?(:ok), do: true
  defp acceptable?({:error, %Error{}}), do: true
  defp acceptable?(_), do: false

  # Calls `fun` with `valid` arguments, each replaced by every hostile value
  # in turn; the last argument, a keyword list, also gets every hostile
  # option value.
  defp probe(name, fun, valid) do
    values = Terms.hostile()
    last = length(valid) - 1

    variants =
      for(i <- 0..last, value <- values, do: List.replace_at(valid, i, value)) ++
        for key <- @option_keys,
            value <- values,
            do: List.update_at(valid, last, &Keyword.put(&1, key, value))

    for args <- variants do
      result =
        try do
          apply(fun, args)
        rescue
          exception ->
            # A function of arity 2 is an enumerable to Elixir; one that
            # breaks Enumerable's contract raises in the caller, as a
            # callback that raises does.
            if name == :execute_duplex and is_function(Enum.at(args, 2), 2),
              do: :raised_by_user_code,
              else:
                flunk(
                  "#{name}#{inspect(args, limit: 4)} raised #{Exception.format(:error, exception)}"
                )
        end

      assert acceptable?(result) or result == :raised_by_user_code,
             "#{name}#{inspect(args, limit: 4)} returned #{inspect(result, limit: 6)}"
    end
  end

  setup do
    pool = Pools.start!("conversion_adapter.ConversionAdapter")
    session = "hostile_#{System.unique_integer([:positive])}"
    {:ok, _} = Session.create(session)
    {:ok, _} = Session.register_variable(session, "v", :json, 1)
    on_exit(fn -> Session.delete(session) end)
    %{pool: pool, session: session}
  end

  test "calls", %{pool: pool} do
    callback = fn _ -> :ok end
    probe(:execute, &Snakepit.execute/3, ["echo", %{x: 1}, [pool: pool]])

    probe(:execute_stream, &Snakepit.execute_stream/4, [
      "nested_chunk",
      %{depth: 1},
      callback,
      [pool: pool]
    ])

    probe(:execute_duplex, &Snakepit.execute_duplex/5, [
      "echo_inputs",
      %{},
      [1, 2],
      callback,
      [pool: pool]
    ])

    probe(:describe, &Snakepit.describe/1, [[pool: pool]])
  end

  test "the universal call", %{pool: pool} do
    probe(:call, &Snakepit.call/4, ["math", "sqrt", [4], [pool: pool]])
    probe(:attr, &Snakepit.attr/3, ["math", "pi", [pool: pool]])
    {:ok, ref} = Snakepit.call("builtins", "object", [], pool: pool)
    probe(:method, &Snakepit.method/4, [ref, "__str__", [], []])
    probe(:attr, &Snakepit.attr/3, [ref, "__class__", []])
    probe(:release, fn ref, _ -> Snakepit.release(ref) end, [ref, []])
  end

  test "sessions and variables", %{pool: pool, session: session} do
    probe(:execute_in_session, &Snakepit.execute_in_session/4, [
      session,
      "echo",
      %{},
      [pool: pool]
    ])

    probe(:create, &Session.create/2, ["s_#{System.unique_integer([:positive])}", []])
    probe(:register_variable, &Session.register_variable/5, [session, "w", :json, 1, []])
    probe(:set_variable, &Session.set_variable/4, [session, "v", 2, []])
    probe(:set_variables, &Session.set_variables/3, [session, [{"v", 3}], []])
    probe(:get_variable, fn s, v, _ -> Session.get_variable(s, v) end, [session, "v", []])
    probe(:get_variables, fn s, v, _ -> Session.get_variables(s, v) end, [session, ["v"], []])
    probe(:list_variables, fn s, p, _ -> Session.list_variables(s, p) end, [session, "*", []])
    probe(:watch, &Session.watch/3, [session, ["v"], []])
  end
end
