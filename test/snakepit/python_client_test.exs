defmodule Snakepit.PythonClientTest do
  # `snakepit_bridge.client` (a Python program outside the pools) against
  # this node's pools: real client process, real gRPC, real workers.
  use ExUnit.Case, async: true

  alias Snakepit.Test.{Pools, Wait}

  setup_all do
    %{pool: Pools.start!(Snakepit.Python.default_adapter(), size: 2)}
  end

  # Runs `body` (Python, inside `async def main(client, pool, marker)`) in a
  # client process; returns its output lines.
  defp client(pool, marker, body) do
    script = """
    import asyncio, json, os, sys
    from snakepit_bridge.client import SnakepitClient, SnakepitError, ErrorType

    async def main(client, pool, marker):
    #{body |> String.split("\n") |> Enum.map_join("\n", &("    " <> &1))}

    async def run():
        async with SnakepitClient(os.environ["SNAKEPIT_ADDRESS"], token=os.environ["SNAKEPIT_TOKEN"]) as client:
            await main(client, sys.argv[1], sys.argv[2])

    asyncio.run(run())
    """

    {output, status} =
      System.cmd("python3", ["-c", script, Atom.to_string(pool), marker],
        env: [
          {"SNAKEPIT_ADDRESS", Snakepit.Bridge.address()},
          {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
          {"PYTHONPATH", Snakepit.Python.package_dir()}
        ],
        stderr_to_stdout: true
      )

    assert status == 0, output
    String.split(output, "\n", trim: true)
  end

  defp marker do
    path = Path.join(System.tmp_dir!(), "snakepit_client_#{System.unique_integer([:positive])}")
    on_exit(fn -> File.rm(path) end)
    path
  end

  defp in_flight(pool) do
    {:ok, stats} = Snakepit.Pool.stats(pool)
    stats.in_flight
  end

  test "results, binary parameters, sessions, errors by type", %{pool: pool} do
    lines =
      client(pool, marker(), ~S"""
      r = await client.execute("add", {"a": 2**70, "b": 0.5}, pool=pool)
      print("add", repr(r.value))
      r = await client.execute("process_binary", binary={"data": b"abc"}, params={"operation": "reverse"}, pool=pool)
      print("binary", r.binary, r.value)
      await client.execute("set_counter", {"value": 5}, pool=pool, session_id="py-client-s")
      r = await client.execute("get_counter", pool=pool, session_id="py-client-s", affinity="strict_queue")
      print("session", r.value["value"])
      for call in [("error_demo", {}), ("no_such_tool", {}), ("slow_steps", {"steps": 50, "step_ms": 100})]:
          try:
              await client.execute(call[0], call[1], pool=pool, timeout=0.5)
          except SnakepitError as e:
              print("error", call[0], e.error_type.value, e.python_type)
      """)

    assert "add #{2 ** 70 + 0.5}" in lines or "add 1.1805916207174113e+21" in lines
    assert "binary b'cba' None" in lines
    assert "session 5" in lines
    assert "error error_demo python ValueError" in lines
    assert "error no_such_tool validation UnknownTool" in lines
    assert "error slow_steps timeout " in lines
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  test "leaving a stream early stops the Python generator", %{pool: pool} do
    closed = marker()

    lines =
      client(pool, closed, ~S"""
      n = 0
      async for chunk in client.stream("infinite_stream", {"delay_ms": 10, "marker_path": marker}, pool=pool):
          n += 1
          if n == 3:
              break
      print("chunks", n)
      """)

    assert lines == ["chunks 3"]
    assert Wait.until(fn -> File.read(closed) == {:ok, "closed"} end, 5_000)
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  test "duplex: inputs in from an async generator, outputs out; leaving early stops the tool",
       %{pool: pool} do
    outcome = marker()

    lines =
      client(pool, outcome, ~S"""
      async def numbers():
          for i in range(5):
              yield i
      async for chunk in client.duplex("sum_inputs", numbers(), pool=pool):
          print("sum", chunk.data)
      async for chunk in client.duplex("echo_inputs", [[1, 2], {"a": 1}, "x"], pool=pool):
          print("echo", chunk.data)
      async def forever():
          i = 0
          while True:
              yield i
              i += 1
      async for chunk in client.duplex("echo_inputs", forever(), {"marker_path": marker}, pool=pool):
          if chunk.data["index"] == 2:
              break
      try:
          async for _ in client.duplex("echo_inputs", [1, object()], pool=pool):
              pass
      except SnakepitError as e:
          print("bad input", e.error_type.value, e.reason)
      """)

    assert "sum {'sum': 10}" in lines
    assert Enum.count(lines, &String.starts_with?(&1, "echo {'index'")) == 3
    assert "bad input validation invalid_parameter" in lines
    assert Wait.until(fn -> File.read(outcome) == {:ok, "cancelled"} end, 5_000)
    assert Wait.until(fn -> in_flight(pool) == 0 end, 5_000)
  end

  # A CA and a certificate it signed for localhost, with the openssl command.
  defp certificates(dir) do
    File.write!(
      Path.join(dir, "ext.cnf"),
      "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
    )

    path = &Path.join(dir, &1)

    for args <- [
          ~w(req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=snakepit-test-ca) ++
            ["-keyout", path.("ca.key"), "-out", path.("ca.pem")],
          ~w(req -newkey rsa:2048 -nodes -subj /CN=localhost) ++
            ["-keyout", path.("key.pem"), "-out", path.("req.csr")],
          [
            "x509",
            "-req",
            "-in",
            path.("req.csr"),
            "-CA",
            path.("ca.pem"),
            "-CAkey",
            path.("ca.key")
          ] ++
            [
              "-CAcreateserial",
              "-days",
              "1",
              "-extfile",
              path.("ext.cnf"),
              "-out",
              path.("cert.pem")
            ]
        ] do
      {_, 0} = System.cmd("openssl", args, stderr_to_stdout: true)
    end

    {path.("ca.pem"), path.("cert.pem"), path.("key.pem")}
  end

  test "beyond loopback the bridge serves TLS, and the client speaks it" do
    dir = Path.join(System.tmp_dir!(), "snakepit_tls_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    {ca, cert, key} = certificates(dir)
    name = :"tls_bridge_#{System.unique_integer([:positive])}"

    # Linked to this test: it stops, and its server with it, when the test ends.
    {:ok, _bridge} =
      Snakepit.Bridge.start_link(
        name: name,
        address: "0.0.0.0:0",
        tls: [certfile: cert, keyfile: key]
      )

    "0.0.0.0:" <> port = Snakepit.Bridge.address(name)

    script = """
    import asyncio, os, sys
    from snakepit_bridge.client import SnakepitClient, SnakepitError
    async def main(address, ca):
        async with SnakepitClient(address, tls_ca=ca, server_name="localhost") as client:
            print("tls", (await client.get_version()).protocol_version)
        try:
            async with SnakepitClient(address, connect_attempts=1, timeout=2.0) as client:
                print("plain", await client.get_version())
        except SnakepitError as e:
            print("plain refused", e.error_type.value)
    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """

    {output, 0} =
      System.cmd("python3", ["-c", script, "127.0.0.1:" <> port, ca],
        env: [
          {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
          {"PYTHONPATH", Snakepit.Python.package_dir()}
        ],
        stderr_to_stdout: true
      )

    lines = String.split(output, "\n", trim: true)
    assert "tls 1" in lines, output
    assert Enum.any?(lines, &String.starts_with?(&1, "plain refused")), output
  end

  test "the sync facade", %{pool: pool} do
    script = """
    import os, sys
    from snakepit_bridge.client import SnakepitClient
    with SnakepitClient.sync(os.environ["SNAKEPIT_ADDRESS"]) as c:
        print(c.execute("add", {"a": 1, "b": 2}, pool=sys.argv[1]).value)
        print([ch.data["number"] for ch in c.stream("stream_numbers", {"count": 3}, pool=sys.argv[1]) if ch.data])
        print([ch.data["input"] for ch in c.duplex("echo_inputs", [1, 2], pool=sys.argv[1]) if ch.data])
    """

    {output, 0} =
      System.cmd("python3", ["-c", script, Atom.to_string(pool)],
        env: [
          {"SNAKEPIT_ADDRESS", Snakepit.Bridge.address()},
          {"SNAKEPIT_TOKEN", Snakepit.Bridge.token()},
          {"PYTHONPATH", Snakepit.Python.package_dir()}
        ],
        stderr_to_stdout: true
      )

    assert String.split(output, "\n", trim: true) == ["3", "[0, 1, 2]", "[1, 2]"]
  end
end
