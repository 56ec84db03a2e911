defmodule Snakepit.DuplexTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Test.Wait

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

  test "halting closes the Python generator" do
    marker = Path.join(System.tmp_dir!(), "snakepit-duplex-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(marker) end)

    assert :ok =
             Snakepit.execute_duplex(
               "echo_inputs",
               %{marker_path: marker},
               Stream.iterate(0, &(&1 + 1)),
               fn %{"index" => i} -> if i == 3, do: :halt, else: :ok end
             )

    assert Wait.until(fn -> File.exists?(marker) end, 1_000)
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
