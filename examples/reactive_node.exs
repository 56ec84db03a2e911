# Python reacting to session variables in real time, with Elixir writing some of them.
#
#     mix run examples/reactive_node.exs
#
# The application (started by `mix run`) runs the node's bridge. This script
# creates the session, starts `python3 examples/reactive_example.py` (or, with
# SNAKEPIT_EXAMPLE_PYTHON=/path/to/python, an interpreter where
# `pip install priv/python` installed the package) with the
# bridge's address and token in its environment (as a worker gets them), and
# while it runs, writes the `status` variable from Elixir every 150 ms and
# watches the `temperature` variable that Python writes.

alias Snakepit.Session

session = "reactive_example"
# Start from a clean session (also when run twice in one VM, as the tests do).
:ok = Session.delete(session)
{:ok, _} = Session.create(session, ttl: 600)
{:ok, _} = Session.register_variable(session, "status", :string, "starting")

# SNAKEPIT_EXAMPLE_PYTHON names an interpreter with the package installed
# (`pip install priv/python`); otherwise python3 finds it in priv/python.
{python, package_path} =
  case System.get_env("SNAKEPIT_EXAMPLE_PYTHON") do
    nil -> {System.find_executable("python3"), [{"PYTHONPATH", Snakepit.Python.package_dir()}]}
    installed -> {System.find_executable(installed), []}
  end

python || raise "no Python interpreter found"
script = Path.join(__DIR__, "reactive_example.py")

env =
  for {name, value} <-
        [
          {"SNAKEPIT_BRIDGE_ADDRESS", Snakepit.Bridge.address()},
          {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
          {"SNAKEPIT_SESSION_ID", session},
          {"PYTHONUNBUFFERED", "1"}
        ] ++ package_path,
      do: {String.to_charlist(name), String.to_charlist(value)}

port =
  Port.open({:spawn_executable, python}, [
    :binary,
    :exit_status,
    :stderr_to_stdout,
    args: [script],
    env: env
  ])

defmodule ReactiveNode do
  @moduledoc false
  alias Snakepit.Session

  @tick_ms 150
  @deadline_ms 60_000

  # Relays Python's output, ticks `status` from Elixir, and counts the
  # temperature changes Elixir sees, until Python exits.
  def run(port, session) do
    deadline = System.monotonic_time(:millisecond) + @deadline_ms
    Process.send_after(self(), :tick, @tick_ms)
    loop(port, session, %{tick: 0, temperature: 0, watch: nil, deadline: deadline})
  end

  defp loop(port, session, state) do
    state = ensure_watch(session, state)
    timeout = max(state.deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {^port, {:data, data}} ->
        IO.write(data)
        loop(port, session, state)

      {^port, {:exit_status, status}} ->
        if state.watch, do: Session.unwatch(state.watch)
        {status, state}

      :tick ->
        tick = state.tick + 1
        # Python's session may not have the variable yet when it starts; it is registered above.
        {:ok, _} = Session.set_variable(session, "status", "elixir tick #{tick}")
        Process.send_after(self(), :tick, @tick_ms)
        loop(port, session, %{state | tick: tick})

      {:snakepit_variable, _ref, %Session.Update{type: :value_change, source: :python}} ->
        loop(port, session, %{state | temperature: state.temperature + 1})

      {:snakepit_variable, _ref, _update} ->
        loop(port, session, state)
    after
      timeout ->
        Port.close(port)
        raise "reactive_example.py did not finish within #{@deadline_ms} ms"
    end
  end

  # Python registers `temperature` first thing; watch it from Elixir once it exists.
  defp ensure_watch(session, %{watch: nil} = state) do
    case Session.watch(session, ["temperature"], include_initial: false) do
      {:ok, watch} -> %{state | watch: watch}
      {:error, _not_yet} -> state
    end
  end

  defp ensure_watch(_session, state), do: state
end

{status, state} = ReactiveNode.run(port, session)

IO.puts(
  "[elixir] wrote status #{state.tick} times; saw #{state.temperature} temperature changes made by Python"
)

:ok = Session.delete(session)
if status != 0, do: raise("reactive_example.py exited with status #{status}")
