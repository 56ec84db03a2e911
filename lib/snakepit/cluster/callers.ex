defmodule Snakepit.Cluster.Callers do
  @moduledoc false
  # Work this node does for a process of another node (a call, a stream's
  # relay) stops when that process exits or its node disconnects, as work
  # for a local caller does: the process doing it is killed, which gives the
  # worker's slot back and cancels the Python tool.
  #
  # One monitor per remote caller, not per call: `run/2` records the pair
  # {caller, server} in a table and asks this process to monitor the caller
  # only the first time it sees it. When the caller goes, every server
  # recorded for it is killed and the caller forgotten. A caller seen again
  # after that is monitored again (a monitor of a process already gone
  # fires at once).

  use GenServer

  @watched __MODULE__
  @servers Module.concat(__MODULE__, Servers)

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Runs `fun` in the calling process, which is killed if `caller` exits (or
  # its node disconnects) meanwhile.
  @spec run(pid(), (() -> result)) :: result when result: term()
  def run(caller, fun) do
    key = {caller, self()}
    :ets.insert(@servers, {key})
    if :ets.insert_new(@watched, {caller}), do: GenServer.cast(__MODULE__, {:watch, caller})

    try do
      fun.()
    after
      :ets.delete(@servers, key)
    end
  end

  @impl true
  def init(nil) do
    :ets.new(@watched, [:named_table, :public, write_concurrency: true])
    # Ordered by caller: a caller's servers are a range of keys.
    :ets.new(@servers, [:named_table, :public, :ordered_set, write_concurrency: true])
    {:ok, nil}
  end

  @impl true
  def handle_cast({:watch, caller}, state) do
    Process.monitor(caller)
    {:noreply, state}
  end

  @impl true
  # Forgotten first: a server recorded from now on monitors the caller
  # again (and is killed at once), one recorded before is found below.
  def handle_info({:DOWN, _monitor, :process, caller, _reason}, state) do
    :ets.delete(@watched, caller)

    for server <- :ets.select(@servers, [{{{caller, :"$1"}}, [], [:"$1"]}]) do
      Process.exit(server, :kill)
    end

    :ets.match_delete(@servers, {{caller, :_}})
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
