"""Diagnostic: the same grpcio (sync) Python client calls `echo` on Snakepit's
own worker and on the grpcio worker, without Elixir or the NIF in the path.

It also times GetVersion, which Snakepit's worker answers in Rust (tonic)
without entering Python, so echo minus GetVersion there is what the Python
dispatch (thread hand-off, GIL, JSON, the tool) adds per call.

Comparing these latencies with the end-to-end figures from Elixir separates
what the worker costs from what the Elixir side (NIF client, pool) costs.
Writes _build/bench-probe.json. Needs PYTHONPATH with bench/python,
_build/bench-gen and priv/python.
"""

import json
import os
import secrets
import subprocess
import sys
import time

import grpc

from snakepit.v1 import worker_pb2 as pb
from snakepit.v1 import worker_pb2_grpc as pb_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAYLOAD = json.dumps({"id": 42, "name": "snakepit", "ok": True, "ratio": 0.5, "values": [1, 2, 3]}).encode()
WORKERS = {
    "snakepit": ("snakepit_bridge.worker", "bench_adapter.BenchAdapter"),
    "grpcio_worker": ("grpcio_worker", "ignored"),
}
CALLS = 2000


def timed(call) -> dict:
    for _ in range(300):
        call()
    lats = []
    for _ in range(CALLS):
        t = time.perf_counter()
        call()
        lats.append((time.perf_counter() - t) * 1e6)
    lats.sort()
    return {
        "calls": CALLS,
        "p50_us": lats[CALLS // 2],
        "p99_us": lats[int(CALLS * 0.99)],
        "mean_us": sum(lats) / CALLS,
    }


def probe(module: str, adapter: str) -> dict:
    token = secrets.token_hex(16)
    env = dict(os.environ, SNAKEPIT_TOKEN=token, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--adapter", adapter, "--worker-id", "probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        port = None
        for _ in range(100):
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("GRPC_READY:"):
                port = int(line.split(":", 1)[1])
                break
        if port is None:
            raise RuntimeError(f"{module} did not print GRPC_READY")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.WorkerServiceStub(channel)
            metadata = (("x-snakepit-token", token),)
            request = pb.ExecuteToolRequest(tool_name="echo", arguments_json=PAYLOAD)
            reply = stub.ExecuteTool(request, metadata=metadata, timeout=30)
            assert json.loads(reply.result.data) == json.loads(PAYLOAD), reply
            version = pb.GetVersionRequest()
            return {
                "echo": timed(lambda: stub.ExecuteTool(request, metadata=metadata, timeout=30)),
                "get_version": timed(lambda: stub.GetVersion(version, metadata=metadata, timeout=30)),
            }
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    results = {name: probe(*spec) for name, spec in WORKERS.items()}
    for name, rpcs in results.items():
        for rpc, r in rpcs.items():
            print(f"grpcio client -> {name} {rpc}: p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us", file=sys.stderr)
    with open(os.path.join(ROOT, "_build", "bench-probe.json"), "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
