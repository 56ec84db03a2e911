defmodule Snakepit.DuplexTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Test.{Pools, Wait}

  defp collect(acc \\ []) do
    receive do
      {:out, chunk} -> collect([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  test "inputs reach the tool in order and each output comes back in order" do
    me = self()
    inputs = Enum.map(1..100, &%{"n" => &1, "text" => "héllo #{&1}"})

    assert :ok = Snakepit.execute_duplex("echo_inputs", %{}, inputs, &send(me, {:out, &1}))

    outputs = for %{"input" => input} <- collect(), do: input
    assert outputs == inputs
  end

  test "async generators take an async iterator of inputs" do
    me = self()
    assert :ok = Snakepit.execute_duplex("async_echo_inputs", %{}, 1..20, &send(me, {:out, &1}))
    assert for(%{"input" => input} <- collect(), do: input) == Enum.to_list(1..20)
  end

  test "binary frames cross without JSON and come back as levels" do
    me = self()

    frames =
      for amplitude <- [0, 1000, 8000, 32_000] do
        for i <- 0..319,
            into: <<>>,
            do: <<if(rem(i, 2) == 0, do: amplitude, else: -amplitude)::little-signed-16>>
      end

    assert :ok = Snakepit.execute_duplex("frame_rms", %{}, frames, &send(me, {:out, &1}))

    levels = for %{"frame" => _, "rms" => rms, "samples" => 320} <- collect(), do: rms
    assert Enum.map(levels, &round/1) == [0, 1000, 8000, 32_000]
  end

  test "the tool sees the end of the inputs" do
    me = self()
    assert :ok = Snakepit.execute_duplex("sum_inputs", %{}, 1..1000, &send(me, {:out, &1}))
    assert [%{"sum" => 500_500} | _] = collect()
  end

  test "an infinite enumerable is read lazily, and only as far as needed" do
    me = self()

    inputs =
      Stream.iterate(0, &(&1 + 1))
      |> Stream.each(&send(me, {:pulled, &1}))

    assert :ok =
             Snakepit.execute_duplex("echo_inputs", %{}, inputs, fn
               %{"index" => 50} -> :halt
               _ -> :ok
             end)

    pulled = Stream.repeatedly(fn -> receive do: ({:pulled, n} -> n), after: (0 -> nil) end)
    last = pulled |> Stream.take_while(& &1) |> Enum.max()
    # Bounded by the buffers between the enumerable and Python, not infinite.
    assert last >= 50 and last < 10_000
  end

  defp marker_path do
    path = Path.join(System.tmp_dir!(), "snakepit-duplex-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  # The showcase tools write "started", then "finished" or "cancelled".
  defp cancelled?(marker), do: File.read(marker) == {:ok, "cancelled"}

  describe "ending early stops the Python tool" do
    test "when the callback halts" do
      marker = marker_path()

      assert :ok =
               Snakepit.execute_duplex(
                 "echo_inputs",
                 %{marker_path: marker},
                 Stream.iterate(0, &(&1 + 1)),
                 fn %{"index" => i} -> if i == 3, do: :halt, else: :ok end
               )

      assert Wait.until(fn -> cancelled?(marker) end, 500)
    end

    test "when the caller is killed" do
      marker = marker_path()
      me = self()

      task =
        Task.async(fn ->
          Snakepit.execute_duplex(
            "echo_inputs",
            %{marker_path: marker, delay_ms: 5},
            Stream.iterate(0, &(&1 + 1)),
            fn _ -> send(me, :running) end
          )
        end)

      assert_receive :running, 5_000
      Task.shutdown(task, :brutal_kill)
      assert Wait.until(fn -> cancelled?(marker) end, 500)
    end

    test "when the call times out" do
      marker = marker_path()

      assert {:error, %Error{category: :timeout}} =
               Snakepit.execute_duplex(
                 "echo_inputs",
                 %{marker_path: marker, delay_ms: 5},
                 Stream.iterate(0, &(&1 + 1)),
                 fn _ -> :ok end,
                 timeout: 300
               )

      assert Wait.until(fn -> cancelled?(marker) end, 500)
    end
  end

  describe "a tool that ends on its own" do
    setup do
      %{pool: Pools.start!("bulk_adapters.DuplexAdapter")}
    end

    test "may stop reading early: the call succeeds and leaves no message behind", %{pool: pool} do
      for _ <- 1..30 do
        me = self()

        assert :ok =
                 Snakepit.execute_duplex(
                   "take_inputs",
                   %{n: 3},
                   Stream.iterate(0, &(&1 + 1)),
                   &send(me, {:out, &1}),
                   pool: pool
                 )

        assert [%{"input" => 0}, %{"input" => 1}, %{"input" => 2}, %{"is_final" => true}] =
                 collect()
      end

      assert {:messages, []} = Process.info(self(), :messages)
    end

    test "many small inputs piling up while the tool is busy keep the connection", %{pool: pool} do
      me = self()

      count_later = fn inputs, delay_ms ->
        :ok =
          Snakepit.execute_duplex(
            "count_inputs_later",
            %{delay_ms: delay_ms},
            inputs,
            &send(me, {:out, &1}),
            pool: pool,
            timeout: 60_000
          )

        collect()
      end

      # Each input is a small HTTP/2 DATA frame the worker holds unread until
      # the tool starts reading; the connection must not take that for a flood.
      assert [%{"count" => 50_000} | _] = count_later.(1..50_000, 300)
      # The same connection serves the next call.
      assert [%{"count" => 3} | _] = count_later.(1..3, 0)
    end

    test "a Python exception mid-stream arrives after the outputs before it", %{pool: pool} do
      me = self()

      assert {:error, %Error{category: :python, python_type: "ValueError"} = error} =
               Snakepit.execute_duplex(
                 "fail_on_input",
                 %{fail_at: 2},
                 1..10,
                 &send(me, {:out, &1}),
                 pool: pool
               )

      assert error.message =~ "cannot handle input 2"
      assert [%{"index" => 0}, %{"index" => 1}] = collect()
    end

    test "an input source stuck forever does not outlive the call", %{pool: pool} do
      me = self()

      stuck =
        Stream.repeatedly(fn ->
          send(me, {:feeder, self()})
          Process.sleep(:infinity)
        end)

      assert :ok =
               Snakepit.execute_duplex("take_inputs", %{n: 0}, stuck, fn _ -> :ok end, pool: pool)

      assert_received {:feeder, feeder}
      refute Process.alive?(feeder)
    end
  end

  test "inputs that cannot be sent are refused with their path" do
    assert {:error, %Error{category: :validation} = error} =
             Snakepit.execute_duplex(
               "echo_inputs",
               %{},
               [%{"ok" => 1}, %{"bad" => self()}],
               fn _ -> :ok end
             )

    assert error.details.path == ~s(input["bad"])
  end

  test "an enumerable that raises fails the call with its exception" do
    inputs = Stream.map(1..10, fn i -> if i == 5, do: raise("bad input source"), else: i end)

    assert_raise RuntimeError, "bad input source", fn ->
      Snakepit.execute_duplex("echo_inputs", %{}, inputs, fn _ -> :ok end)
    end
  end

  test "a slow input source does not hold back the outputs" do
    me = self()
    # The source waits for the callback's go-ahead before each next input:
    # this only completes if outputs reach the callback while the source waits.
    inputs =
      Stream.map(1..5, fn i ->
        if i > 1 do
          receive do
            :next -> :ok
          end
        end

        i
      end)

    feeder_ref = make_ref()

    assert :ok =
             Snakepit.execute_duplex(
               "echo_inputs",
               %{},
               Stream.each(inputs, fn _ -> send(me, {feeder_ref, self()}) end),
               fn
                 %{"input" => _} ->
                   receive do
                     {^feeder_ref, feeder} -> send(feeder, :next)
                   end

                 _ ->
                   :ok
               end
             )
  end

  test "bad arguments are refused" do
    assert {:error, %Error{category: :validation}} =
             Snakepit.execute_duplex("echo_inputs", %{}, :not_enumerable, fn _ -> :ok end)

    assert {:error, %Error{category: :validation}} =
             Snakepit.execute_duplex("echo_inputs", %{}, [], :not_a_function)
  end
end
