defmodule Bench.PortEcho do
  @moduledoc """
  Baseline: a hand-written Elixir Port to `bench/python/port_echo.py`.

  One GenServer owns one port (`{:packet, 4}`, binary); callers encode their
  request themselves and decode the reply themselves (per call), the server
  writes requests to the port and answers callers in order (the Python loop
  answers one message at a time, in order). Several ports make a "pool" with
  a round robin over an atomics counter.
  """

  use GenServer

  def start_link(python, script), do: GenServer.start_link(__MODULE__, {python, script})

  @doc "Sends one raw packet and returns the raw reply packet."
  def request(pid, packet, timeout \\ 30_000),
    do: GenServer.call(pid, {:request, packet}, timeout)

  @doc "Echo of a JSON-able map: encode, send, receive, decode."
  def echo(pid, map), do: pid |> request(["J" | Bench.JSON.encode(map)]) |> Bench.JSON.decode!()

  @doc "Echo of a binary, raw in the packet (no JSON, no base64)."
  def echo_bytes(pid, bin), do: request(pid, ["B" | bin])

  def stop(pid), do: GenServer.stop(pid, :normal, 10_000)

  # A round-robin group of ports.
  def group(pids), do: {List.to_tuple(pids), :atomics.new(1, []), length(pids)}

  def pick({pids, counter, n}) do
    i = :atomics.add_get(counter, 1, 1)
    elem(pids, rem(i, n))
  end

  @impl true
  def init({python, script}) do
    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:packet, 4},
        args: ["-u", script]
      ])

    {:ok, %{port: port, waiting: :queue.new()}}
  end

  @impl true
  def handle_call({:request, packet}, from, state) do
    true = Port.command(state.port, packet)
    {:noreply, %{state | waiting: :queue.in(from, state.waiting)}}
  end

  @impl true
  def handle_info({port, {:data, data}}, %{port: port} = state) do
    {{:value, from}, waiting} = :queue.out(state.waiting)
    GenServer.reply(from, data)
    {:noreply, %{state | waiting: waiting}}
  end

  def handle_info({port, {:exit_status, status}}, %{port: port} = state),
    do: {:stop, {:port_exited, status}, state}

  @impl true
  def terminate(_reason, state) do
    # Closing stdin makes the Python loop exit.
    Port.close(state.port)
  catch
    _, _ -> :ok
  end
end
