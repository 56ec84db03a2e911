defmodule Mix.Tasks.Snakepit.StatusTest do
  # Not async: it swaps Mix's shell.
  use ExUnit.Case, async: false

  alias Snakepit.Test.Pools

  setup do
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(Mix.Shell.IO) end)
  end

  test "prints the running pools with their workers, queue and sessions" do
    pool = Pools.start!("snakepit_bridge.adapters.showcase.ShowcaseAdapter", size: 2)
    {:ok, _} = Snakepit.execute("ping", %{}, pool: pool)
    workers = Snakepit.Pool.workers(pool)

    Mix.Tasks.Snakepit.Status.run([])
    assert_received {:mix_shell, :info, [status]}

    assert status =~ ~r/^Node .+: \d+ pool\(s\), \d+ session\(s\)/
    assert status =~ "Pool #{inspect(pool)}: 2/2 workers ready, 0 in flight, 0 queued; 1 requests"

    # A row per worker: id, OS pid, state, uptime, requests, in flight, memory.
    served =
      for %{id: id, os_pid: os_pid} <- workers do
        [_, served] =
          Regex.run(~r/#{id}\s+#{os_pid}\s+ready\s+\d+ \S+\s+(\d+)\s+0\s+[\d.]+ MiB/, status)

        String.to_integer(served)
      end

    assert Enum.sum(served) == 1
  end

  test "refuses unknown arguments" do
    assert_raise Mix.Error, ~r/usage/, fn -> Mix.Tasks.Snakepit.Status.run(["--bogus"]) end
  end
end
