defmodule Snakepit.VmKillTest do
  use ExUnit.Case, async: true

  alias Snakepit.Test.{OsProcesses, Pools, Wait}

  @rounds 20
  # Rounds run two at a time: each is mostly a VM starting.
  @concurrency 2
  @sleepers_per_call 3

  @moduletag timeout: 300_000

  # Each round starts a separate VM with a pool of 2 workers whose tools start
  # `sleep` processes, kills the VM with SIGKILL (no code of ours runs in it
  # after that), and waits for the workers and every `sleep` to be gone.
  test "nothing a worker started outlives a VM killed by SIGKILL (#{@rounds} rounds)" do
    # Every OS pid a round learns of, so that none survives a failed test.
    {:ok, started} = Agent.start(fn -> [] end)

    on_exit(fn ->
      started |> Agent.get(& &1) |> Enum.each(&kill_ours/1)
      Agent.stop(started)
    end)

    results =
      1..@rounds
      |> Task.async_stream(fn _ -> kill_round(started) end,
        max_concurrency: @concurrency,
        timeout: 120_000
      )
      |> Enum.map(fn {:ok, result} -> result end)

    pids = Enum.flat_map(results, & &1.pids)
    left = Enum.flat_map(results, & &1.left)
    assert length(pids) == @rounds * (2 + 2 * @sleepers_per_call)

    assert left == [],
           "#{length(left)} of #{length(pids)} processes outlived their VM: #{inspect(left)}"
  end

  defp kill_round(started) do
    {port, vm_pid} = start_vm()
    Agent.update(started, &[vm_pid | &1])
    %{workers: workers, sleepers: sleepers} = await_pids(port)
    pids = workers ++ sleepers
    Agent.update(started, &(pids ++ &1))
    assert Enum.all?(pids, &OsProcesses.alive?/1)

    kill(vm_pid)

    receive do
      {^port, {:exit_status, _}} -> :ok
    after
      10_000 -> flunk("the VM did not die")
    end

    # Death is asynchronous; a generous bound, checked every 10 ms.
    Wait.until(fn -> not Enum.any?(pids, &OsProcesses.alive?/1) end, 5_000)
    %{pids: pids, left: Enum.filter(pids, &OsProcesses.alive?/1)}
  end

  defp start_vm do
    script = """
    :ok = Application.load(:snakepit)
    Application.put_env(:snakepit, :pools, [
      [name: :default, size: 2, adapter: "hardening_adapters.SpawnerAdapter",
       python_path: [#{inspect(Pools.adapters_dir())}]]
    ])
    {:ok, _} = Application.ensure_all_started(:snakepit)
    workers = Enum.map(Snakepit.Pool.workers(:default), & &1.os_pid)
    # One call per worker, at once, so that both have children.
    sleepers =
      1..2
      |> Enum.map(fn _ -> Task.async(fn ->
        Snakepit.execute("spawn_sleepers", %{n: #{@sleepers_per_call}, seconds: 120}) end) end)
      |> Enum.flat_map(fn task -> {:ok, pids} = Task.await(task); pids end)
    IO.puts("PIDS:" <> Enum.join(workers, ",") <> ";" <> Enum.join(sleepers, ","))
    Process.sleep(:infinity)
    """

    OsProcesses.start_vm(script)
  end

  defp await_pids(port) do
    receive do
      {^port, {:data, {:eol, "PIDS:" <> pids}}} ->
        [workers, sleepers] =
          pids
          |> String.split(";")
          |> Enum.map(fn list -> list |> String.split(",") |> Enum.map(&String.to_integer/1) end)

        %{workers: workers, sleepers: sleepers}

      {^port, {:data, _other}} ->
        await_pids(port)

      {^port, {:exit_status, status}} ->
        flunk("the VM exited with status #{status} before reporting its processes")
    after
      60_000 -> flunk("the VM did not report its processes")
    end
  end

  # Kills `pid` if it is still one of the processes this test started (a
  # pid may have been reused since).
  defp kill_ours(pid) do
    case File.read("/proc/#{pid}/cmdline") do
      {:ok, cmdline} ->
        if cmdline =~ ~r/^sleep|snakepit_bridge\.worker|beam|elixir/ and OsProcesses.alive?(pid),
          do: kill(pid)

      {:error, _} ->
        :ok
    end
  end

  defp kill(pid),
    do: System.cmd("kill", ["-KILL", Integer.to_string(pid)], stderr_to_stdout: true)
end
