defmodule Snakepit.HeadOfLineTest do
  # A worker with free concurrency starts a call at once, however many slow
  # calls (sync, async or streams) it is running.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{Pools, Wait}

  @showcase "snakepit_bridge.adapters.showcase.ShowcaseAdapter"

  defp stuck(pool, :sync),
    do: Snakepit.execute("slow_steps", %{steps: 300, step_ms: 10}, pool: pool, timeout: 30_000)

  defp stuck(pool, :async),
    do:
      Snakepit.execute("slow_steps_async", %{steps: 300, step_ms: 10},
        pool: pool,
        timeout: 30_000
      )

  defp stuck(pool, :stream),
    do:
      Snakepit.execute_stream("slow_stream", %{steps: 300, step_ms: 10}, fn _ -> :ok end,
        pool: pool,
        timeout: 30_000
      )

  for kind <- [:sync, :async, :stream] do
    test "a ping is answered within 500 ms beside 7 stuck #{kind} calls, 20 times in a row" do
      pool = Pools.start!(@showcase)

      for _round <- 1..20 do
        # The previous round's calls, killed, give their slots back once the
        # worker has stopped their tools: the ping must find a free slot.
        assert Wait.until(
                 fn -> match?({:ok, %{in_flight: 0}}, Snakepit.Pool.stats(pool)) end,
                 10_000
               )

        tasks = for _ <- 1..7, do: Task.async(fn -> stuck(pool, unquote(kind)) end)
        started = System.monotonic_time(:millisecond)

        assert {:ok, %{"message" => "pong"}} =
                 Snakepit.execute("ping", %{}, pool: pool, timeout: 2_000)

        assert System.monotonic_time(:millisecond) - started < 500
        Enum.each(tasks, &Task.shutdown(&1, :brutal_kill))
      end
    end
  end
end
