defmodule Snakepit.Test.Mailbox do
  @moduledoc """
  What waits in the calling process's mailbox, for the tests of flow control.
  """

  @doc """
  Payload bytes (`"data"` binaries) of the stream messages waiting in the
  mailbox, without taking them: what a stream has sent ahead of its callback.
  """
  @spec waiting_payload() :: non_neg_integer()
  def waiting_payload do
    {:messages, messages} = Process.info(self(), :messages)

    Enum.reduce(messages, 0, fn
      {_ref, {:chunk, chunk, _bytes}}, sum -> sum + payload_size(chunk)
      {_ref, {:chunks, batch, _bytes}}, sum -> sum + Enum.sum(Enum.map(batch, &payload_size/1))
      _, sum -> sum
    end)
  end

  defp payload_size(%{"data" => data}) when is_binary(data), do: byte_size(data)
  defp payload_size(_), do: 0

  @doc "How many `message`s wait in the mailbox (taking them)."
  @spec count(term()) :: non_neg_integer()
  def count(message, n \\ 0) do
    receive do
      ^message -> count(message, n + 1)
    after
      0 -> n
    end
  end

  @doc "The largest value of the `{tag, value}` messages in the mailbox (taking them); 0 for none."
  @spec peak(term()) :: number()
  def peak(tag, peak \\ 0) do
    receive do
      {^tag, value} -> peak(tag, max(peak, value))
    after
      0 -> peak
    end
  end
end
