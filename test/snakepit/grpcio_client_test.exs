defmodule Snakepit.GrpcioClientTest do
  # The wire contract of the outside-call RPCs held by the ecosystem's
  # standard client: grpcio, with stubs generated from proto/ by the client
  # (test/support/python/grpcio_client.py), against this node's pools.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{Pools, TestPython, Wait}

  @script Path.expand("../support/python/grpcio_client.py", __DIR__)
  @proto Path.expand("../../proto", __DIR__)

  if reason = TestPython.skip_reason("grpc_tools") do
    @moduletag skip: reason
  end

  setup_all do
    %{pool: Pools.start!(Snakepit.Python.default_adapter(), size: 2)}
  end

  test "Describe, Execute, ExecuteStream and ExecuteDuplex from grpcio", %{pool: pool} do
    marker = Path.join(System.tmp_dir!(), "snakepit_grpcio_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(marker) end)

    {output, status} =
      System.cmd(
        TestPython.path(),
        [
          @script,
          @proto,
          Snakepit.Bridge.address(),
          Snakepit.Bridge.token(),
          Atom.to_string(pool),
          marker
        ],
        stderr_to_stdout: true
      )

    assert status == 0, output
    lines = String.split(output, "\n", trim: true)

    for line <- [
          "describe compatible True 1",
          "describe tools True True False",
          "describe v99 False True",
          "execute 8 True False",
          "execute error python ValueError True",
          "execute refused INVALID_ARGUMENT invalid_parameter",
          "wrong token UNAUTHENTICATED",
          "no token UNAUTHENTICATED",
          "stream [0, 1, 2, 3]",
          "stream final True true remote",
          "stream cancelled 3",
          "duplex sum 6.5",
          ~s(duplex echo ["x", {"k": 1}]),
          "duplex without start INVALID_ARGUMENT"
        ] do
      assert line in lines, "#{inspect(line)} not in:\n#{output}"
    end

    # The cancelled stream's generator ran its `finally`; every slot is back.
    assert Wait.until(fn -> File.read(marker) == {:ok, "closed"} end, 5_000)

    assert Wait.until(
             fn -> match?({:ok, %{in_flight: 0}}, Snakepit.Pool.stats(pool)) end,
             5_000
           )
  end
end
