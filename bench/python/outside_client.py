"""Programs outside the BEAM calling a node's tools through its bridge, measured.

Run by bench/run.exs, once per round and system, as a separate OS process:

    outside_client.py unary  SYSTEM POOL CALLS  WARMUP PAYLOAD_JSON
    outside_client.py stream SYSTEM POOL CHUNKS WARMUP PACED_CHUNKS PACED_EVERY_US

with the node's bridge address in ``SNAKEPIT_ADDRESS`` and its token in
``SNAKEPIT_TOKEN``; prints one JSON object on stdout. SYSTEM is one of

- ``client``: ``snakepit_bridge.client.SnakepitClient`` (async, on asyncio),
  the client Snakepit ships for such programs;
- ``grpcio``: a plain grpcio client (the blocking stubs generated from
  ``proto/snakepit/v1/bridge.proto`` and ``worker.proto``, which bench/run.sh
  puts in _build/bench-gen), calling ``Execute`` / ``ExecuteStream``.

Both do the work a user's program would: the parameters encoded to JSON,
the result or each chunk decoded from JSON.

``unary`` calls the ``echo`` tool with the payload ``WARMUP`` times, then
``CALLS`` times one after the other (concurrency 1), and prints
``{"echo": {"samples_us": [...], "wall_s": ..., "cpu_busy_us": ...}}``; the
grpcio client then does the same with the bridge's ``GetVersion`` (answered
by the bridge alone), under ``"get_version"``.

``stream`` reads streams of the bench adapter's ``stream_stamped`` tool
(``{"number": i, "t_ns": time.time_ns()}``, stamped by the tool as it makes
the chunk): ``WARMUP`` chunks, then ``PACED_CHUNKS`` chunks made one every
``PACED_EVERY_US`` µs (``"paced"``: the consumer keeps up, no queue), then
``CHUNKS`` chunks as fast as they go (``"saturated"``). For each it prints
the chunks received per second, the age of each chunk when the consumer has
it decoded (receive time minus its stamp, both ``CLOCK_REALTIME`` on the same
machine), the time between two chunks at the consumer, and the producer's
rate (chunks per second between the first and the last stamp) and how far
it ran ahead of the consumer (the most chunks made but not yet had, as each
chunk arrived).

``cpu_busy_us`` is the CPU time every process on the machine spent busy
during the measured part (``/proc/stat``), as in bench/run.exs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, Dict, List

TOOL_ECHO = "echo"
TOOL_STREAM = "stream_stamped"
TOKEN_KEY = "x-snakepit-token"
SYSTEMS = ("client", "grpcio")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_busy_us() -> float:
    """CPU time all processes on the machine spent busy so far, in µs (user,
    nice, system, irq and softirq of ``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) * 1_000_000 / _CLOCK_TICKS


def summary(values: List[float]) -> Dict[str, float]:
    """p50, p99 and max of ``values``, quantiles chosen as bench/run.exs does."""
    ordered = sorted(values)
    n = len(ordered)
    return {"p50": ordered[min(n - 1, n // 2)], "p99": ordered[min(n - 1, int(0.99 * n))], "max": ordered[-1]}


class StreamTally:
    """What a consumer records per chunk: its stamp and when it had it."""

    def __init__(self) -> None:
        self.stamps: List[int] = []
        self.arrivals: List[int] = []
        self._t0 = 0.0
        self._busy0 = 0.0

    def start(self) -> None:
        """Called just before the call."""
        self._busy0 = cpu_busy_us()
        self._t0 = time.perf_counter()

    def add(self, data: Dict[str, Any]) -> None:
        """One chunk, decoded, had now."""
        self.arrivals.append(time.time_ns())
        self.stamps.append(data["t_ns"])

    def peak_ahead(self) -> int:
        """The most chunks the tool had made that the consumer had not had
        yet, seen as each chunk arrived: how far the producer ran ahead."""
        peak = made = 0
        for had, arrival in enumerate(self.arrivals, 1):
            while made < len(self.stamps) and self.stamps[made] <= arrival:
                made += 1
            peak = max(peak, made - had)
        return peak

    def result(self) -> Dict[str, Any]:
        """Called after the last chunk: the figures the bench reads."""
        seconds = time.perf_counter() - self._t0
        busy = cpu_busy_us() - self._busy0
        n = len(self.arrivals)
        produced_s = (self.stamps[-1] - self.stamps[0]) / 1e9
        return {
            "chunks": n,
            "seconds": seconds,
            "chunks_per_s": n / seconds,
            "producer_chunks_per_s": (n - 1) / produced_s if produced_s > 0 else None,
            "cpu_busy_us": busy,
            "peak_ahead": self.peak_ahead(),
            "age_us": summary([(a - s) / 1000 for a, s in zip(self.arrivals, self.stamps)]),
            "gap_us": summary([(b - a) / 1000 for a, b in zip(self.arrivals, self.arrivals[1:])]),
        }


def unary_result(samples: List[float], t0: int, busy0: float) -> Dict[str, Any]:
    """The figures of a unary run that started at ``t0`` (perf counter, ns)."""
    return {
        "samples_us": samples,
        "wall_s": (time.perf_counter_ns() - t0) / 1e9,
        "cpu_busy_us": cpu_busy_us() - busy0,
    }


def check_echo(value: Any, payload: Dict[str, Any]) -> None:
    """Stops the program if the echo changed the payload."""
    if value != payload:
        raise SystemExit(f"echo returned {value!r}, not {payload!r}")


# --- snakepit_bridge.client --------------------------------------------------------


async def client_unary(address: str, token: str, pool: str, payload: Dict[str, Any], calls: int, warmup: int) -> Any:
    """Unary echo with ``await SnakepitClient.execute(...)``."""
    from snakepit_bridge.client import SnakepitClient

    async with SnakepitClient(address, token=token) as client:
        check_echo((await client.execute(TOOL_ECHO, payload, pool=pool)).value, payload)
        for _ in range(warmup):
            await client.execute(TOOL_ECHO, payload, pool=pool)
        samples: List[float] = []
        busy0, t0 = cpu_busy_us(), time.perf_counter_ns()
        for _ in range(calls):
            s = time.perf_counter_ns()
            await client.execute(TOOL_ECHO, payload, pool=pool)
            samples.append((time.perf_counter_ns() - s) / 1000)
        return {"echo": unary_result(samples, t0, busy0)}


async def client_stream(address: str, token: str, pool: str, runs: List[Dict[str, int]]) -> List[Dict[str, Any]]:
    """Streams of ``stream_stamped`` with ``runs`` as parameters, each read
    with ``async for chunk in SnakepitClient.stream(...)``."""
    from snakepit_bridge.client import SnakepitClient

    async with SnakepitClient(address, token=token) as client:
        tallies = []
        for params in runs:
            tally = StreamTally()
            tally.start()
            async for chunk in client.stream(TOOL_STREAM, params, pool=pool):
                if chunk.data is not None:
                    tally.add(chunk.data)
            tallies.append(tally.result())
        return tallies


# --- plain grpcio --------------------------------------------------------------------


def grpcio_stub(address: str) -> Any:
    """A ``BridgeService`` stub on a new channel to ``address``."""
    import grpc
    from snakepit.v1 import bridge_pb2_grpc

    return bridge_pb2_grpc.BridgeServiceStub(grpc.insecure_channel(address))


def grpcio_unary(address: str, token: str, pool: str, payload: Dict[str, Any], calls: int, warmup: int) -> Any:
    """Unary echo with the generated stub's blocking ``Execute``; then as
    many calls of the bridge's ``GetVersion``, answered by the bridge alone
    (no pool, no worker, no Elixir): the floor of a call through the bridge."""
    from snakepit.v1 import bridge_pb2, worker_pb2

    stub = grpcio_stub(address)
    auth = ((TOKEN_KEY, token),)

    def echo() -> Any:
        request = bridge_pb2.ExecuteRequest(
            tool_name=TOOL_ECHO, parameters={k: json.dumps(v) for k, v in payload.items()}, pool=pool
        )
        answer = stub.Execute(request, metadata=auth)
        if answer.HasField("error"):
            raise SystemExit(f"echo failed: {answer.error}")
        return json.loads(answer.result.data)

    def get_version() -> Any:
        return stub.GetVersion(worker_pb2.GetVersionRequest(), metadata=auth)

    check_echo(echo(), payload)
    result = {}
    for name, call in [("echo", echo), ("get_version", get_version)]:
        for _ in range(warmup):
            call()
        samples: List[float] = []
        busy0, t0 = cpu_busy_us(), time.perf_counter_ns()
        for _ in range(calls):
            s = time.perf_counter_ns()
            call()
            samples.append((time.perf_counter_ns() - s) / 1000)
        result[name] = unary_result(samples, t0, busy0)
    return result


def grpcio_stream(address: str, token: str, pool: str, runs: List[Dict[str, int]]) -> List[Dict[str, Any]]:
    """Streams of ``stream_stamped`` with ``runs`` as parameters, each read
    from the generated stub's ``ExecuteStream`` iterator."""
    from snakepit.v1 import bridge_pb2

    stub = grpcio_stub(address)
    auth = ((TOKEN_KEY, token),)
    tallies = []
    for params in runs:
        request = bridge_pb2.ExecuteRequest(
            tool_name=TOOL_STREAM, parameters={k: json.dumps(v) for k, v in params.items()}, pool=pool
        )
        tally = StreamTally()
        tally.start()
        for message in stub.ExecuteStream(request, metadata=auth):
            if message.HasField("error"):
                raise SystemExit(f"stream failed: {message.error}")
            if message.HasField("payload"):
                tally.add(json.loads(message.payload.data))
        tallies.append(tally.result())
    return tallies


def main(argv: List[str]) -> None:
    """Runs one measurement and prints its JSON on stdout."""
    mode, system, pool, count, warmup = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    if mode not in ("unary", "stream") or system not in SYSTEMS:
        raise SystemExit(__doc__)
    address, token = os.environ["SNAKEPIT_ADDRESS"], os.environ["SNAKEPIT_TOKEN"]
    result: Dict[str, Any]
    if mode == "unary":
        payload = json.loads(argv[5])
        if system == "client":
            result = asyncio.run(client_unary(address, token, pool, payload, count, warmup))
        else:
            result = grpcio_unary(address, token, pool, payload, count, warmup)
    else:
        paced, every_us = int(argv[5]), int(argv[6])
        runs = [{"count": warmup}, {"count": paced, "every_us": every_us}, {"count": count}]
        if system == "client":
            tallies = asyncio.run(client_stream(address, token, pool, runs))
        else:
            tallies = grpcio_stream(address, token, pool, runs)
        _, paced_run, saturated = tallies
        for run, expected in [(paced_run, paced), (saturated, count)]:
            if run["chunks"] != expected:
                raise SystemExit(f"{run['chunks']} chunks received, {expected} expected")
        result = {"paced": paced_run, "saturated": saturated}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
