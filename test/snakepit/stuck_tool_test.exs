defmodule Snakepit.StuckToolTest do
  # A tool blocked in C cannot be interrupted when its call times out: the
  # error says the tool did not stop, and once it has run past :cancel_grace
  # the worker is recycled (its other calls finish first), so its threads do
  # not pile up.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{OsProcesses, Pools, Wait}

  @adapter "blocking_adapter.BlockingAdapter"

  defp threads(os_pid) do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, status} ->
        [_, count] = Regex.run(~r/^Threads:\s+(\d+)$/m, status)
        String.to_integer(count)

      {:error, _gone} ->
        0
    end
  end

  defp os_pids(pool) do
    {:ok, workers} = Snakepit.Pool.worker_info(pool)
    for %{os_pid: os_pid, status: :ready} <- workers, do: os_pid
  end

  test "40 timed-out calls of a tool blocked in C leave the worker's threads bounded" do
    pool = Pools.start!(@adapter, cancel_grace: 1_000)
    [first] = os_pids(pool)
    # Served once, so the threads a call needs are there.
    assert {:ok, _} = Snakepit.execute("threads", %{}, pool: pool)
    before = threads(first)

    # Running on the first worker when it gets recycled: it must finish.
    other =
      Task.async(fn ->
        Snakepit.execute("steps", %{steps: 30, step_ms: 100}, pool: pool, timeout: 30_000)
      end)

    {errors, peaks} =
      Enum.map_reduce(1..40, %{}, fn _, peaks ->
        # Waits for a ready worker (the replacement, after a recycle).
        assert {:ok, _} = Snakepit.execute("threads", %{}, pool: pool, timeout: 30_000)
        result = Snakepit.execute("block", %{seconds: 60}, pool: pool, timeout: 200)

        peaks =
          Enum.reduce(
            os_pids(pool),
            peaks,
            &Map.update(&2, &1, threads(&1), fn n -> max(n, threads(&1)) end)
          )

        {result, peaks}
      end)

    # Every call timed out. The worker's answer says that the tool did not
    # stop; a call that waited for the replacement of a recycled worker, or
    # whose answer came after the VM's own deadline (a loaded machine), has
    # no such report.
    reports =
      for result <- errors,
          assert({:error, %Snakepit.Error{category: :timeout} = error} = result),
          Map.has_key?(error.details, :tool_stopped) do
        assert error.details.tool_stopped == false
        assert error.message =~ "did not stop"
        error
      end

    assert length(reports) >= 20

    assert {:ok, 30} = Task.await(other, 30_000)

    stats = Snakepit.Pool.stats(pool) |> elem(1)
    assert stats.recycles >= 1
    # The first worker is gone, its stuck threads with it.
    assert Wait.until(fn -> not OsProcesses.alive?(first) end, 10_000)
    refute first in os_pids(pool)

    peak = peaks |> Map.values() |> Enum.max()

    # The stuck tools cancelled within one :cancel_grace (1 s / 200 ms ≈ 5),
    # the calls in flight and the executor threads they need.
    assert peak <= before + 16
  end
end
