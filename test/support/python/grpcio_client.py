"""An independent client of the node's bridge: grpcio, with stubs generated
here from ``proto/`` (the ecosystem's standard client, none of Snakepit's
code). Run by test/snakepit/grpcio_client_test.exs against a real node.

Usage: grpcio_client.py PROTO_DIR ADDRESS TOKEN POOL MARKER

Prints one line per observation; the test asserts on them.
"""

import json
import sys
import tempfile
from typing import Any, Dict, Iterator

import grpc
from grpc_tools import protoc


def generate(proto_dir: str, out: str) -> None:
    """Writes the Python stubs of bridge.proto and worker.proto into ``out``."""
    import grpc_tools

    include = grpc_tools.__path__[0] + "/_proto"
    for proto in ["snakepit/v1/worker.proto", "snakepit/v1/bridge.proto"]:
        code = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", proto])
        if code != 0:
            raise SystemExit(f"protoc failed on {proto}")


def reason(error: grpc.RpcError) -> str:
    """The ``x-snakepit-error`` trailing metadata entry of a refusal."""
    trailers = dict(error.trailing_metadata() or ())
    return trailers.get("x-snakepit-error", "")


def main(proto_dir: str, address: str, token: str, pool: str, marker: str) -> None:
    out = tempfile.mkdtemp(prefix="snakepit_stubs_")
    generate(proto_dir, out)
    sys.path.insert(0, out)
    from snakepit.v1 import bridge_pb2, bridge_pb2_grpc, worker_pb2

    auth = (("x-snakepit-token", token),)
    channel = grpc.insecure_channel(address)
    stub = bridge_pb2_grpc.BridgeServiceStub(channel)

    def request(tool: str, params: Dict[str, Any], **fields: Any) -> Any:
        return bridge_pb2.ExecuteRequest(
            tool_name=tool, parameters={k: json.dumps(v) for k, v in params.items()}, pool=pool, **fields
        )

    def payload(p: Any) -> Any:
        return json.loads(p.data) if p.kind == worker_pb2.PAYLOAD_KIND_JSON else bytes(p.data)

    # Describe: versions, compatibility really checked, pools with tools.
    node = stub.Describe(bridge_pb2.DescribeNodeRequest(client_protocol_version="1"), metadata=auth)
    print("describe compatible", node.compatible, node.version.protocol_version)
    tools = {t.name: t for p in node.pools if p.name == pool for t in p.tools}
    print("describe tools", "add" in tools, tools["stream_numbers"].supports_streaming, tools["add"].supports_streaming)
    other = stub.Describe(bridge_pb2.DescribeNodeRequest(client_protocol_version="99"), metadata=auth)
    print("describe v99", other.compatible, bool(other.compatibility_message))

    # Execute: a result, the tool's own error, a refusal before any worker.
    answer = stub.Execute(request("add", {"a": 5, "b": 3}), metadata=auth)
    print("execute", payload(answer.result), pool in answer.worker_id, answer.HasField("error"))
    answer = stub.Execute(request("error_demo", {}), metadata=auth)
    print("execute error", answer.error.category, answer.error.error_type, "Traceback" in answer.error.traceback)
    bad = bridge_pb2.ExecuteRequest(tool_name="add", parameters={"a": "{not json"}, pool=pool)
    try:
        stub.Execute(bad, metadata=auth)
    except grpc.RpcError as e:
        print("execute refused", e.code().name, reason(e))
    try:
        stub.Execute(request("add", {"a": 1, "b": 2}), metadata=(("x-snakepit-token", "wrong"),))
    except grpc.RpcError as e:
        print("wrong token", e.code().name)
    try:
        stub.Execute(request("add", {"a": 1, "b": 2}))
    except grpc.RpcError as e:
        print("no token", e.code().name)

    # ExecuteStream: chunks in order, then the final metadata.
    chunks = list(stub.ExecuteStream(request("stream_numbers", {"count": 4}), metadata=auth))
    print("stream", [payload(c.payload)["number"] for c in chunks if c.HasField("payload")])
    final = chunks[-1]
    print("stream final", final.is_final, final.metadata["synthetic_final"], final.metadata["tool_type"])

    # A client that cancels its stream stops the Python generator.
    call = stub.ExecuteStream(request("infinite_stream", {"delay_ms": 10, "marker_path": marker}), metadata=auth)
    for n, _ in enumerate(call, 1):
        if n == 3:
            call.cancel()
            break
    print("stream cancelled", n)

    # ExecuteDuplex: start, inputs, half-close; outputs as chunks.
    def messages(tool: str, inputs: Any) -> Iterator[Any]:
        yield bridge_pb2.DuplexExecuteRequest(start=request(tool, {}))
        for value in inputs:
            data = json.dumps(value).encode()
            yield bridge_pb2.DuplexExecuteRequest(input=worker_pb2.Payload(kind=worker_pb2.PAYLOAD_KIND_JSON, data=data))

    outputs = [payload(c.payload) for c in stub.ExecuteDuplex(messages("sum_inputs", [1, 2, 3.5]), metadata=auth) if c.HasField("payload")]
    print("duplex sum", outputs[0]["sum"])
    outputs = [payload(c.payload) for c in stub.ExecuteDuplex(messages("echo_inputs", ["x", {"k": 1}]), metadata=auth) if c.HasField("payload")]
    print("duplex echo", json.dumps([o["input"] for o in outputs]))
    try:
        only_input = iter([bridge_pb2.DuplexExecuteRequest(input=worker_pb2.Payload(data=b"1"))])
        list(stub.ExecuteDuplex(only_input, metadata=auth))
    except grpc.RpcError as e:
        print("duplex without start", e.code().name)
    channel.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
