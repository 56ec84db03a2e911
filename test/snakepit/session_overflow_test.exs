defmodule Snakepit.SessionOverflowTest do
  # Not async: it measures the whole VM's memory, which other tests running
  # at the same time would grow.
  use ExUnit.Case, async: false

  alias Snakepit.Session
  alias Snakepit.Session.{Info, Update}

  defp new_session do
    id = "session_overflow_test_#{System.unique_integer([:positive])}"
    {:ok, %Info{id: ^id}} = Session.create(id)
    on_exit(fn -> Session.delete(id) end)
    id
  end

  describe "a watcher that does not read" do
    test "100 000 updates keep the VM's memory bounded, then the watch ends with :overflow" do
      id = new_session()
      {:ok, _} = Session.register_variable(id, "x", :integer, 0)
      {:ok, watch} = Session.watch(id, ["x"], include_initial: false)
      ref = watch.ref
      :erlang.garbage_collect()
      before = :erlang.memory(:total)

      # This process writes and never reads: its watch is the unread watcher.
      for i <- 1..100_000, do: {:ok, _} = Session.set_variable(id, "x", i)

      grown = :erlang.memory(:total) - before
      {:message_queue_len, queued} = Process.info(self(), :message_queue_len)
      {:memory, own} = Process.info(self(), :memory)

      figures =
        "VM grew #{div(grown, 1024)} KiB, #{queued} messages queued, " <>
          "this process holds #{div(own, 1024)} KiB"

      # The node's buffer is 1 024 updates: at most that many wait in the
      # mailbox and as many in the store (about 10 KiB each) before the
      # watch ends. Without the bound: 100 000 messages, 1.1 GiB.
      assert queued <= 1_024 + 1, figures
      assert grown < 128 * 1024 * 1024, figures
      assert own < 64 * 1024 * 1024, figures

      # The end comes once the store's buffer overflowed too, after the updates
      # the mailbox already held; nothing follows it.
      assert_receive {:snakepit_watch_ended, ^ref, :overflow}, 10_000
      updates = drain(ref, 0)
      assert updates in 1..1_024
      refute_received {:snakepit_watch_ended, ^ref, _}

      assert Snakepit.Test.Wait.until(
               fn -> match?({:ok, %{watcher_count: 0}}, Session.get(id)) end,
               5_000
             )

      # A new watch works, from the next write on.
      {:ok, again} = Session.watch(id, ["x"], include_initial: false)
      {:ok, _} = Session.set_variable(id, "x", -1)
      again_ref = again.ref
      assert_receive {:snakepit_variable, ^again_ref, %Update{value: -1, version: 100_002}}
      :ok = Session.unwatch(again)
    end
  end

  test "the :buffer option bounds the updates a watch leaves unread" do
    id = new_session()
    {:ok, _} = Session.register_variable(id, "x", :integer, 0)
    # Messages that are not the watch's stay where they are.
    for i <- 1..5, do: send(self(), {:other, i})
    {:ok, watch} = Session.watch(id, ["x"], include_initial: true, buffer: 10)
    ref = watch.ref
    # The initial value and nine changes fill the watch's share of the
    # mailbox (waited for: a writer faster than the forwarder would overflow
    # the store's buffer first, and what it still held is dropped).
    for i <- 1..9, do: {:ok, _} = Session.set_variable(id, "x", i)

    assert Snakepit.Test.Wait.until(
             fn -> Process.info(self(), :message_queue_len) == {:message_queue_len, 15} end,
             5_000
           )

    # Now the mailbox counts as full: the next updates wait in the store's
    # buffer of 10, and the eleventh ends the watch.
    for i <- 10..1_000, do: {:ok, _} = Session.set_variable(id, "x", i)

    assert_receive {:snakepit_watch_ended, ^ref, :overflow}, 10_000
    assert drain(ref, 0) == 10
    for i <- 1..5, do: assert_received({:other, ^i})
  end

  defp drain(ref, count) do
    receive do
      {:snakepit_variable, ^ref, %Update{}} -> drain(ref, count + 1)
    after
      0 -> count
    end
  end
end
