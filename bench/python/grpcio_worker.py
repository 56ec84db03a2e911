"""Baseline: a conventional pure-Python gRPC worker (grpcio, `grpc.aio`).

Implements `proto/snakepit/v1/worker.proto` the way the original snakepit's
Python worker did: a grpc.aio server, generated protobuf classes, JSON with the
standard library. It speaks the Snakepit worker protocol, so Snakepit's NIF
drives it exactly like its own worker (pool option `worker_module:
"grpcio_worker"`):

- binds 127.0.0.1:0 and prints `GRPC_READY:<port>` once it serves;
- refuses requests without the `x-snakepit-token` metadata from
  `SNAKEPIT_TOKEN` (UNAUTHENTICATED);
- exits when its stdin closes.

Tools: `echo` (returns its JSON arguments), `echo_bytes` (returns the binary
argument `data`), `stream_numbers(count)` and `stream_bytes(count, size)`.
`--adapter` is accepted and ignored.

Needs grpcio and protobuf plus the code generated from the proto by
grpc_tools.protoc (bench/run.sh puts it in _build/bench-gen).
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import threading

import grpc

from snakepit.v1 import worker_pb2 as pb
from snakepit.v1 import worker_pb2_grpc as pb_grpc

TOKEN_KEY = "x-snakepit-token"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._token = token

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(self, continuation, details):
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_KEY and value == self._token:
                return await continuation(details)
        return self._deny_unary


def _error(error_type: str, message: str) -> pb.ToolError:
    return pb.ToolError(category="validation", error_type=error_type, message=message)


def _arguments(request: pb.ExecuteToolRequest) -> dict:
    return json.loads(request.arguments_json) if request.arguments_json else {}


class Worker(pb_grpc.WorkerServiceServicer):
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.version = pb.VersionInfo(
            protocol_version="1",
            bridge_version="grpcio-baseline",
            runtime_version=f"{platform.python_implementation()} {platform.python_version()}",
        )

    async def GetVersion(self, request, context):
        return self.version

    async def Describe(self, request, context):
        tools = [
            pb.ToolSpec(name="echo", description="Return the arguments unchanged"),
            pb.ToolSpec(name="echo_bytes", description="Return the binary argument `data`"),
            pb.ToolSpec(name="stream_numbers", description="Yield numbers", supports_streaming=True),
            pb.ToolSpec(name="stream_bytes", description="Yield byte blocks", supports_streaming=True),
        ]
        return pb.DescribeResponse(
            version=self.version, adapter="grpcio_worker", worker_id=self.worker_id, tools=tools
        )

    async def ExecuteTool(self, request, context):
        name = request.tool_name
        if name == "echo":
            data = json.dumps(_arguments(request), separators=(",", ":")).encode()
            return pb.ExecuteToolResponse(result=pb.Payload(kind=pb.PAYLOAD_KIND_JSON, data=data))
        if name == "echo_bytes":
            data = request.binary_arguments.get("data", b"")
            return pb.ExecuteToolResponse(result=pb.Payload(kind=pb.PAYLOAD_KIND_RAW, data=data))
        return pb.ExecuteToolResponse(error=_error("UnknownTool", f"unknown tool {name!r}"))

    async def ExecuteStreamingTool(self, request, context):
        name = request.tool_name
        args = _arguments(request)
        if name == "stream_numbers":
            count = int(args.get("count", 10))
            for i in range(count):
                data = json.dumps({"number": i}, separators=(",", ":")).encode()
                yield pb.ToolChunk(
                    payload=pb.Payload(kind=pb.PAYLOAD_KIND_JSON, data=data), is_final=i == count - 1
                )
        elif name == "stream_bytes":
            count = int(args.get("count", 10))
            size = int(args.get("size", 1024))
            block = bytes(range(256)) * (size // 256) + bytes(size % 256)
            for i in range(count):
                yield pb.ToolChunk(
                    payload=pb.Payload(kind=pb.PAYLOAD_KIND_RAW, data=block), is_final=i == count - 1
                )
        else:
            yield pb.ToolChunk(error=_error("UnknownTool", f"unknown tool {name!r}"))


async def serve(worker_id: str) -> None:
    token = os.environ.get("SNAKEPIT_TOKEN", "")
    if not token:
        print("SNAKEPIT_TOKEN is not set", file=sys.stderr)
        sys.exit(2)
    limit = 256 * 1024 * 1024
    server = grpc.aio.server(
        interceptors=[TokenInterceptor(token)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
    )
    pb_grpc.add_WorkerServiceServicer_to_server(Worker(worker_id), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"GRPC_READY:{port}", flush=True)

    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        finally:
            loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    await stdin_closed.wait()
    await server.stop(grace=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="")
    parser.add_argument("--worker-id", default="grpcio")
    args = parser.parse_args()
    asyncio.run(serve(args.worker_id))


if __name__ == "__main__":
    main()
