defmodule Bench.Nodes do
  @moduledoc false
  # Erlang distribution for the bench's cross-node section, as
  # test/snakepit/cluster_test.exs sets it up: epmd (started only when none
  # answers, and then killed at the end), this node made distributed under a
  # unique long name on 127.0.0.1 (no fixed port: the kernel picks it), and a
  # peer node on this machine (OTP's `:peer`) running Snakepit with no pool but
  # the one the bench starts there, under its Snakepit.Supervisor.

  # Polls every 10 ms until `fun` is truthy or `timeout_ms` has passed: for
  # effects seen from outside (epmd answering, a pool of another node appearing
  # in `:pg` with its published figures, OS processes gone), never a fixed sleep.
  def wait_until(fun, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(fun, deadline)
  end

  defp poll(fun, deadline) do
    cond do
      fun.() ->
        true

      System.monotonic_time(:millisecond) > deadline ->
        false

      true ->
        Process.sleep(10)
        poll(fun, deadline)
    end
  end

  # Starts epmd if needed and distribution on this node; returns what
  # `stop/1` undoes.
  def start do
    epmd_started? =
      if epmd_up?() do
        false
      else
        System.cmd("epmd", ["-daemon"], stderr_to_stdout: true)
        wait_until(&epmd_up?/0, 5_000) || raise "epmd -daemon: epmd does not answer"
        true
      end

    distribution_started? =
      if Node.alive?() do
        false
      else
        name = :"snakepit_bench_#{System.unique_integer([:positive])}@127.0.0.1"
        {:ok, _} = :net_kernel.start([name, :longnames])
        true
      end

    %{epmd_started?: epmd_started?, distribution_started?: distribution_started?}
  end

  # Stops distribution (if started here) and epmd (if started here, once no
  # node is registered with it any more: `epmd -kill` refuses otherwise).
  def stop(%{epmd_started?: epmd_started?, distribution_started?: distribution_started?}) do
    if distribution_started?, do: :net_kernel.stop()

    if epmd_started? do
      wait_until(&epmd_empty?/0, 5_000)
      System.cmd("epmd", ["-kill"], stderr_to_stdout: true)
      wait_until(fn -> not epmd_up?() end, 5_000) || IO.puts(:stderr, "epmd -kill: still up")
    end

    :ok
  end

  defp epmd_up?, do: match?({_, 0}, System.cmd("epmd", ["-names"], stderr_to_stdout: true))

  defp epmd_empty? do
    case System.cmd("epmd", ["-names"], stderr_to_stdout: true) do
      {out, 0} -> not String.contains?(out, "name ")
      _ -> true
    end
  end

  # A peer node on 127.0.0.1 with this node's code path, Snakepit started
  # there with no pool of its own (`pools: []`).
  def start_peer do
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    name = :"snakepit_bench_peer_#{System.unique_integer([:positive])}"

    {:ok, peer, node} =
      :peer.start(%{name: name, host: ~c"127.0.0.1", longnames: true, args: paths})

    :ok = :erpc.call(node, Application, :load, [:snakepit])
    :ok = :erpc.call(node, Application, :put_env, [:snakepit, :pools, []])
    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit])
    {peer, node}
  end

  # Starts a pool with `opts` on `node`, under its Snakepit.Supervisor (a
  # pool started with start_link from the `:erpc` process would go with it);
  # returns its workers' OS pids once it shows on this node, in
  # `Snakepit.Cluster.pools()`, with all its workers.
  def start_pool(node, opts) do
    name = Keyword.fetch!(opts, :name)
    size = Keyword.fetch!(opts, :size)

    {:ok, _} =
      :erpc.call(node, Supervisor, :start_child, [Snakepit.Supervisor, {Snakepit.Pool, opts}])

    {:ok, workers} = :erpc.call(node, Snakepit.Pool, :worker_info, [name])

    listed? = fn ->
      Snakepit.Cluster.pools()
      |> Map.get(name, [])
      |> Enum.any?(&match?(%{node: ^node, workers: ^size}, &1))
    end

    wait_until(listed?, 10_000) ||
      raise "pool #{inspect(name)} of #{node} not listed in Snakepit.Cluster.pools()"

    for %{os_pid: os_pid} <- workers, do: os_pid
  end

  # Stops the peer, then waits until its Python workers (`os_pids`) are gone.
  def stop_peer(peer, os_pids) do
    :ok = :peer.stop(peer)

    wait_until(fn -> not Enum.any?(os_pids, &os_alive?/1) end, 10_000) ||
      IO.puts(:stderr, "the peer's Python workers outlived it: #{inspect(os_pids)}")

    :ok
  end

  # Alive, not a zombie (Linux).
  def os_alive?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        not (stat |> String.split(") ", parts: 2) |> List.last() |> String.starts_with?("Z"))

      {:error, _} ->
        false
    end
  end
end
