defmodule Snakepit.Test.Wait do
  @moduledoc """
  Waits for an effect observed from outside (a file another OS process wrote,
  a process that died), checking every 10 ms until a deadline. Readiness is
  never waited for this way: the code under test reports it.
  """

  @doc "True as soon as `fun` returns truthy, false after `timeout_ms`."
  @spec until((() -> boolean()), non_neg_integer()) :: boolean()
  def until(fun, timeout_ms) do
    poll(fun, System.monotonic_time(:millisecond) + timeout_ms)
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
end
