"""Turns _build/bench-raw.json (written by bench/run.exs) into bench/results/:
latest.json (figures without the raw samples), latest.md (tables, ratios,
targets) and latency.png (unary latency distributions).

Run by bench/run.sh with the bench venv's Python (it needs matplotlib).
"""

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = os.path.join(ROOT, "_build", "bench-raw.json")
OUT = os.path.join(ROOT, "bench", "results")
COMMAND = "bash bench/run.sh"
SYSTEMS = ["snakepit", "snakepit_unix", "grpcio_worker", "port"]
BASELINES = ["grpcio_worker", "port"]
LABEL = {
    "snakepit": "Snakepit",
    "snakepit_unix": "Snakepit, Unix socket",
    "grpcio_worker": "grpcio worker",
    "port": "hand-written port",
}


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1048576, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": commit,
    }


def fmt(x: float, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}".replace(",", " ")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


OUTSIDE_SYSTEMS = ["in_beam", "python_client", "grpcio_client"]
OUTSIDE_LABEL = {
    "in_beam": "in the BEAM: `Snakepit.execute/3`",
    "python_client": "Python client: `SnakepitClient`",
    "grpcio_client": "grpcio client",
    "grpcio_get_version": "grpcio client, bridge `GetVersion` (floor)",
}
OUTSIDE_STREAM_LABEL = {
    "in_beam": "in the BEAM: `Snakepit.execute_stream/4` callback",
    "python_client": "Python client: `async for` over `SnakepitClient.stream`",
    "grpcio_client": "grpcio client: iterating `ExecuteStream`",
}


def outside_unary(raw: dict, system: str, pool: int) -> Optional[dict]:
    """The outside-client unary figures of `system` on pool `pool`, or None."""
    for r in raw.get("outside_unary") or []:
        if (r["system"], r["pool_size"]) == (system, pool):
            return r
    return None


def outside_section(add: Callable[[str], None], raw: dict) -> None:
    """The section "Outside clients (through the bridge)" of latest.md."""
    unary = raw.get("outside_unary") or []
    stream = raw.get("outside_stream") or {}
    if not unary and not stream:
        return
    add("## Outside clients (through the bridge)")
    add("")
    add(
        "Programs outside the BEAM run tools through the node's bridge (`proto/snakepit/v1/bridge.proto`: "
        "`Execute`, `ExecuteStream`; address from `Snakepit.Bridge.address()`, token from "
        "`Snakepit.Bridge.token()` in `x-snakepit-token`), which lends them a worker of a pool through the "
        "pool's own checkout. They call the TCP pool of the tables above (`bench/python/bench_adapter.py`). "
        "Each is `bench/python/outside_client.py`, a separate OS process started once per round with the "
        "bench venv's Python, which warms up before it measures. Systems, in rounds that alternate between "
        "them:"
    )
    add("")
    add(
        "- **in the BEAM**: `Snakepit.execute/3` and `execute_stream/4` from Elixir, measured again here in "
        "the same alternation (the reference)."
    )
    add(
        "- **Python client**: `snakepit_bridge.client.SnakepitClient` on asyncio (`await client.execute(...)`, "
        "`async for chunk in client.stream(...)`), Snakepit's client for such programs (the `_native` "
        "extension: a Rust gRPC client on a runtime of its own, awaited as native coroutines)."
    )
    add(
        "- **grpcio client**: the standard Python gRPC stack, stubs generated from `bridge.proto` and "
        "`worker.proto` by `grpc_tools.protoc` (bench/run.sh), blocking `stub.Execute(...)` and iteration "
        "over `stub.ExecuteStream(...)`. It also times the bridge's `GetVersion`, which the bridge answers "
        "itself (no Elixir, no pool, no worker): the floor of any call through the bridge from Python."
    )
    add("")
    add(
        "Both Python programs encode the parameters to JSON and decode every result and chunk from JSON, as "
        "a user's program would. Ratios are **Python client ÷ other**: below 1 is better for the Python "
        "client for latencies, above 1 for rates."
    )
    add("")
    if unary:
        calls = unary[0]["calls"]
        add(f"### Unary echo, concurrency 1 ({calls} calls per system and pool, 4 rounds, same 66-byte payload)")
        add("")
        add("| pool | system | p50 / p99 µs | calls/s | CPU µs per call (machine) |")
        add("|---|---|---|---|---|")
        for pool in (1, 2):
            for system in [*OUTSIDE_SYSTEMS, "grpcio_get_version"]:
                r = outside_unary(raw, system, pool)
                if r:
                    add(
                        f"| {pool} | {OUTSIDE_LABEL[system]} | {fmt(r['p50_us'])} / {fmt(r['p99_us'])} "
                        f"| {fmt(r['calls_per_s'])} | {fmt(r['cpu_us_per_call'])} |"
                    )
        add("")
        add("| pool | p50 ratio Python client ÷ in the BEAM / ÷ grpcio | calls/s ratio ÷ in the BEAM / ÷ grpcio |")
        add("|---|---|---|")
        for pool in (1, 2):
            beam, py, grpcio = (outside_unary(raw, system, pool) for system in OUTSIDE_SYSTEMS)
            if py and beam and grpcio:
                add(
                    f"| {pool} | {ratio(py['p50_us'], beam['p50_us'])} / {ratio(py['p50_us'], grpcio['p50_us'])} "
                    f"| {ratio(py['calls_per_s'], beam['calls_per_s'])} "
                    f"/ {ratio(py['calls_per_s'], grpcio['calls_per_s'])} |"
                )
        add("")
        beam, py, grpcio, floor = (outside_unary(raw, system, 1) for system in [*OUTSIDE_SYSTEMS, "grpcio_get_version"])
        if py and beam and grpcio and floor:
            add(
                f"Where the time goes (pool 1, p50): a call through the bridge from grpcio costs at least "
                f"{fmt(floor['p50_us'])} µs (`GetVersion`: the client, HTTP/2 both ways and the bridge's "
                f"server). `Execute` adds {fmt(grpcio['p50_us'] - floor['p50_us'])} µs: the request goes "
                "from the bridge's server to `Snakepit.Bridge`, which checks a worker out of the pool in a "
                "process of its own and hands the lease back to the server, and the worker call over gRPC "
                f"(from Elixir, the same checkout and worker call take {fmt(beam['p50_us'])} µs all told, "
                f"{fmt(grpcio['p50_us'] - floor['p50_us'] - beam['p50_us'])} µs less). "
                + (
                    f"`SnakepitClient` takes {fmt(py['p50_us'] - grpcio['p50_us'])} µs more than the grpcio "
                    "client: each of its calls is a coroutine run on the extension's runtime thread, which "
                    "wakes the event loop through its self-pipe when the answer is there."
                    if py["p50_us"] > grpcio["p50_us"]
                    else f"`SnakepitClient` takes {fmt(grpcio['p50_us'] - py['p50_us'])} µs less than the grpcio "
                    "client."
                )
            )
            add("")
    if stream:
        any_run = next(iter(stream.values()))
        add(f"### Streaming: {fmt(any_run['chunks'])} small chunks (median of 3 runs per system)")
        add("")
        add(
            'The bench adapter\'s `stream_stamped` tool yields `{"number": i, "t_ns": time.time_ns()}`, '
            "stamped as the tool makes the chunk; the consumer notes when it has the chunk decoded "
            "(`time.time_ns()` in Python, `:os.system_time(:nanosecond)` in Elixir: the same "
            "`CLOCK_REALTIME` of the same machine). Per-chunk latency is the **age** of a chunk when the "
            "consumer has it (arrival minus stamp), measured on a paced stream of "
            f"{fmt(any_run['paced_chunks'])} chunks, one every {any_run['paced_every_us']} µs, which every "
            "consumer keeps up with, so that no queue forms and the age is the time the path takes. "
            f"At full speed ({fmt(any_run['chunks'])} chunks as fast as they go) the table gives the rate, "
            "the time between two chunks at the consumer, the CPU time the machine spent per chunk, the "
            "producer's own rate (between its first and last stamps) and how far it ran ahead: the most "
            "chunks made but not yet had by the consumer, seen as each chunk arrived."
        )
        add("")
        add(
            "| consumer | chunks/s | time between chunks p50 / p99 µs | CPU µs per chunk (machine) "
            "| producer chunks/s | peak chunks ahead | paced: age p50 / p99 µs |"
        )
        add("|---|---|---|---|---|---|---|")
        for system in OUTSIDE_SYSTEMS:
            r = stream.get(system)
            if r:
                add(
                    f"| {OUTSIDE_STREAM_LABEL[system]} | {fmt(r['chunks_per_s'])} "
                    f"| {fmt(r['gap_p50_us'], 1)} / {fmt(r['gap_p99_us'], 1)} | {fmt(r['cpu_us_per_chunk'], 1)} "
                    f"| {fmt(r['producer_chunks_per_s'])} | {fmt(r['peak_ahead'])} "
                    f"| {fmt(r['paced_age_p50_us'])} / {fmt(r['paced_age_p99_us'])} |"
                )
        add("")
        beam, py, grpcio = (stream.get(system) for system in OUTSIDE_SYSTEMS)
        if py and beam and grpcio:
            add(
                f"Ratios, Python client ÷ in the BEAM / ÷ grpcio: chunks/s "
                f"{ratio(py['chunks_per_s'], beam['chunks_per_s'])} / "
                f"{ratio(py['chunks_per_s'], grpcio['chunks_per_s'])}; "
                f"paced age p50 {ratio(py['paced_age_p50_us'], beam['paced_age_p50_us'])} / "
                f"{ratio(py['paced_age_p50_us'], grpcio['paced_age_p50_us'])}."
            )
            add("")
            add(
                "At full speed the consumer sets the rate: the producer ran up to "
                f"{fmt(py['peak_ahead'])} chunks ahead of `SnakepitClient` and {fmt(grpcio['peak_ahead'])} "
                "ahead of the grpcio client (in the BEAM: "
                f"{fmt(beam['peak_ahead'])}). That many fit in the flow-control windows of the two gRPC hops "
                "(worker to node, node to client) and in the sockets' buffers, all sized in bytes, which "
                "hold many small chunks: their memory is bounded, but at full speed a chunk waited "
                f"{py['age_p99_us'] / 1e3:.1f} ms (p99) in them before the Python client had it. "
                "`SnakepitClient.stream` reads the stream inside the awaiting coroutine: a chunk already "
                "received is returned at once, and only a wait for the network wakes the event loop from "
                "the extension's runtime; grpcio's blocking iterator waits for each message on a condition "
                "that its polling thread signals."
            )
            add("")


CROSS_P50_TARGET_US = 150
TELEMETRY_COST_TARGET = 0.03
CROSS_CHUNKS_TARGET = 100_000


def cross_unary(cross: dict, system: str, concurrency: int) -> Optional[dict]:
    """The cross-node unary figures of `system` ("local", "remote", "erpc") at `concurrency`, or None."""
    for r in cross.get("unary") or []:
        if (r["system"], r["concurrency"]) == (system, concurrency):
            return r
    return None


def cross_targets(cross: dict) -> list:
    """(target, measured, met) of the cross-node section, for its own table and the targets table."""
    targets = []
    local1, remote1 = cross_unary(cross, "local", 1), cross_unary(cross, "remote", 1)
    if local1 and remote1:
        added = remote1["p50_us"] - local1["p50_us"]
        targets.append(
            (
                f"across nodes: a remote call adds ≤ {CROSS_P50_TARGET_US} µs at p50 (unary echo, c=1)",
                f"{fmt(added)} µs ({fmt(local1['p50_us'])} µs local, {fmt(remote1['p50_us'])} µs remote)",
                added <= CROSS_P50_TARGET_US,
            )
        )
    stream = cross.get("stream_small") or {}
    if "remote" in stream:
        local = stream.get("local", {}).get("chunks_per_s")
        targets.append(
            (
                f"across nodes: ≥ {fmt(CROSS_CHUNKS_TARGET)} small chunks/s streamed from a pool of another node",
                f"{fmt(stream['remote']['chunks_per_s'])} chunks/s (local: {fmt(local)} chunks/s)",
                stream["remote"]["chunks_per_s"] >= CROSS_CHUNKS_TARGET,
            )
        )
    return targets


def telemetry_targets(tel: dict) -> list:
    """(target, measured, met) of the telemetry section: a handler's cost at c=1 and c=64, and per span."""
    targets = []
    rows = {(r["system"], r["concurrency"]): r for r in tel.get("unary") or []}
    span = tel.get("span_us") or {}
    none1 = rows.get(("none", 1))
    if span and none1:
        share = (span["handler"] - span["none"]) / none1["p50_us"]
        targets.append(
            (
                f"telemetry: a handler's work per call is < {TELEMETRY_COST_TARGET:.0%} of a call's p50 (c=1)",
                f"{span['handler'] - span['none']:.2f} µs of {fmt(none1['p50_us'])} µs ({share:.2%}); "
                f"the span itself costs {span['none']:.2f} µs without a handler",
                share < TELEMETRY_COST_TARGET,
            )
        )
    for c in (1, 64):
        none, handler = rows.get(("none", c)), rows.get(("handler", c))
        if not (none and handler):
            continue
        p50_cost = handler["p50_us"] / none["p50_us"] - 1
        rate_cost = 1 - handler["calls_per_s"] / none["calls_per_s"]
        targets.append(
            (
                f"telemetry: a handler on the call span costs < {TELEMETRY_COST_TARGET:.0%} (unary echo, c={c})",
                f"p50 {p50_cost:+.1%}, calls/s {-rate_cost:+.1%} ({fmt(none['p50_us'])} → {fmt(handler['p50_us'])} µs, "
                f"{fmt(none['calls_per_s'])} → {fmt(handler['calls_per_s'])} calls/s)",
                p50_cost < TELEMETRY_COST_TARGET and rate_cost < TELEMETRY_COST_TARGET,
            )
        )
    return targets


def telemetry_section(add: Callable[[str], None], raw: dict) -> None:
    """The section "Telemetry" of latest.md."""
    tel = raw.get("telemetry") or {}
    if not tel:
        return
    add("## Telemetry")
    add("")
    add(
        f"Unary echo on a pool of {tel['pool_size']} (TCP), `:telemetry` present: **none** with no handler "
        "attached, **handler** with a handler on `[:snakepit, :call, :start]` and `[:snakepit, :call, :stop]` "
        "that counts calls and sums their durations (a metrics reporter's work). Rounds alternate, the handler "
        f"attached for its rounds only ({tel.get('rounds', 4)} rounds each); it saw {fmt(tel['handled_calls'])} "
        "calls; on this 2-CPU machine, rounds differ by several percent, more than the handler costs, so "
        "the events' own cost is also timed alone (a call's span, empty, 200 000 times). `:telemetry` is "
        "bench/lib/telemetry.ex, a stand-in doing what the library does on each event (an ETS lookup of the "
        "event's handlers, then calling them), since the library cannot be installed here."
    )
    add("")
    add("| concurrency | none: p50 µs / calls/s | handler: p50 µs / calls/s |")
    add("|---|---|---|")
    for r_none in [r for r in tel.get("unary") or [] if r["system"] == "none"]:
        c = r_none["concurrency"]
        r_h = next(r for r in tel["unary"] if r["system"] == "handler" and r["concurrency"] == c)
        add(
            f"| {c} | {fmt(r_none['p50_us'])} / {fmt(r_none['calls_per_s'])} "
            f"| {fmt(r_h['p50_us'])} / {fmt(r_h['calls_per_s'])} |"
        )
    add("")
    add("| target | measured | |")
    add("|---|---|---|")
    for text, measured, ok in telemetry_targets(tel):
        add(f"| {text} | {measured} | {'met' if ok else '**not met**'} |")
    add("")


def cross_section(add: Callable[[str], None], raw: dict) -> None:
    """The section "Across nodes" of latest.md."""
    cross = raw.get("cross_node") or {}
    if not cross:
        return
    add("## Across nodes")
    add("")
    add(
        f"The same pool ({cross['pool_size']} workers of `bench/python/bench_adapter.py`, TCP, the options of the "
        "tables above) on this node and on a peer node of the same machine, started by OTP's `:peer` "
        f"(up in {fmt(cross['peer_start_ms'])} ms; its pool started and listed here in `Snakepit.Cluster.pools()` "
        f"{fmt(cross['peer_pool_listed_ms'])} ms later), the two nodes connected by Erlang distribution over "
        "loopback TCP. Every call is made on this node: **local** pinned here (`node: node()`; without it, "
        "calls beyond the local pool's free slots would go to the peer), **remote** pinned to the peer "
        "(`Snakepit.execute(..., pool: P, node: peer)`: an `:erpc` call that runs the call there; a stream runs "
        "in a relay process there and reaches the callback here, with flow control end to end). Rounds "
        "alternate between the two; both VMs and both pools' Python workers share the machine's CPUs. "
        "Ratios are **remote ÷ local**."
    )
    add("")
    add("| measure | local | remote | remote ÷ local |")
    add("|---|---|---|---|")
    for c in (1, 64):
        local, remote = cross_unary(cross, "local", c), cross_unary(cross, "remote", c)
        if not (local and remote):
            continue
        add(
            f"| unary echo, concurrency {c} ({local['calls']} calls each): p50 / p99 µs "
            f"| {fmt(local['p50_us'])} / {fmt(local['p99_us'])} | {fmt(remote['p50_us'])} / {fmt(remote['p99_us'])} "
            f"| {ratio(remote['p50_us'], local['p50_us'])} |"
        )
        add(
            f"| same, calls/s | {fmt(local['calls_per_s'])} | {fmt(remote['calls_per_s'])} "
            f"| {ratio(remote['calls_per_s'], local['calls_per_s'])} |"
        )
        add(
            f"| same, CPU µs per call (machine) | {fmt(local['cpu_us_per_call'])} | {fmt(remote['cpu_us_per_call'])} "
            f"| {ratio(remote['cpu_us_per_call'], local['cpu_us_per_call'])} |"
        )
    stream = cross.get("stream_small") or {}
    if "local" in stream and "remote" in stream:
        local, remote = stream["local"], stream["remote"]
        add(
            f"| {fmt(local['chunks'])} small chunks (`stream_numbers`) into a callback, chunks/s (median of 3) "
            f"| {fmt(local['chunks_per_s'])} | {fmt(remote['chunks_per_s'])} "
            f"| {ratio(remote['chunks_per_s'], local['chunks_per_s'])} |"
        )
    add("")
    local1, remote1, erpc1 = (cross_unary(cross, system, 1) for system in ("local", "remote", "erpc"))
    if local1 and remote1:
        text = f"A remote call adds {fmt(remote1['p50_us'] - local1['p50_us'])} µs at p50 (concurrency 1)."
        if erpc1:
            text += (
                f" The bare round trip to the peer, `:erpc.call(peer, :erlang, :node, [])` (no Snakepit), "
                f"takes {fmt(erpc1['p50_us'])} µs at p50 ({fmt(erpc1['cpu_us_per_call'])} µs of CPU): the floor of "
                "any call through distribution. The rest is the remote path's own work on both nodes (the "
                "process `:erpc` spawns there, its record in the table that ties it to its caller (one monitor per caller process), the call's options "
                "checked on both sides) and a second VM's threads waking, on the same CPUs."
            )
        add(text)
        add("")
    targets = cross_targets(cross)
    if targets:
        add("| target | measured | |")
        add("|---|---|---|")
        for text, measured, ok in targets:
            add(f"| {text} | {measured} | {'met' if ok else '**not met**'} |")
        add("")


def main() -> None:
    with open(RAW) as f:
        raw = json.load(f)

    samples = {}
    unary = []
    for r in raw["unary"]:
        samples[(r["system"], r["pool_size"], r["concurrency"])] = r.pop("samples")
        unary.append(r)
    raw["unary"] = unary
    outside_samples = {}
    for r in raw.get("outside_unary") or []:
        outside_samples[(r["system"], r["pool_size"])] = r.pop("samples")
    mach = machine()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def u(system, pool, c):
        for r in unary:
            if (r["system"], r["pool_size"], r["concurrency"]) == (system, pool, c):
                return r
        return None

    lines = []
    add = lines.append
    add("# Snakepit benchmarks: latest run")
    add("")
    add(f"- date: {now}")
    add(f"- command: `{COMMAND}` (from the repository root; commit `{mach['git_commit']}`)")
    add(
        f"- machine: {mach['nproc']} CPUs (`nproc`), {mach['cpu_model']}, "
        f"{mach['memory_gib']} GiB RAM, Linux {mach['kernel']}"
    )
    m = raw["meta"]
    add(
        f"- Elixir {m['elixir']} / OTP {m['otp']} ({m['schedulers']} schedulers), "
        f"CPython {mach['python']}; whole bench run: {m['total_seconds']:.0f} s"
    )
    add(
        f"- load average (1/5/15 min) when the run started: {m.get('loadavg_at_start', '?')} "
        "— anything above 0 means other work shared the CPUs and skews the figures"
    )
    add("")
    add("Systems, all started and measured in the same run, from Elixir:")
    add("")
    add(
        "- **Snakepit**: `Snakepit.execute/3`, `execute_stream/4` on pools started with "
        "`Snakepit.Pool.start_link` running `bench/python/bench_adapter.py` (default pool "
        "options: 8 requests in flight per worker, then the pool's queue; TCP on loopback)."
    )
    add(
        "- **Snakepit, Unix socket**: the same with the pool option `transport: :unix` (workers "
        "serve on abstract Unix sockets instead of loopback TCP)."
    )
    add(
        "- **grpcio worker**: `bench/python/grpcio_worker.py`, a conventional `grpc.aio` server "
        "implementing `proto/snakepit/v1/worker.proto` (the original snakepit's architecture), "
        "driven by the same Snakepit pools and NIF client (`worker_module: \"grpcio_worker\"`). "
        "Ratios to it isolate the Python side of the worker."
    )
    add(
        "- **hand-written port**: an Elixir `Port` (`{:packet, 4}`) owned by a GenServer that "
        "pipelines requests, to `bench/python/port_echo.py` (stdlib `json`); the caller encodes "
        "and decodes JSON per call with a small Elixir JSON module (`bench/lib/json.ex`). "
        "Pool size N = N ports, round robin. Binaries travel raw in the packet (no base64)."
    )
    add("")
    add(
        f"Echo payload: `{json.dumps(m['payload'], separators=(',', ':'))}` "
        f"({m['payload_json_bytes']} bytes of JSON). Latencies are end to end in the calling "
        "Elixir process. Ratio columns are **Snakepit ÷ baseline**: below 1 is better for "
        "Snakepit for latencies, above 1 is better for rates."
    )
    add("")

    add("## Unary echo")
    add("")
    add(
        "| pool | conc. | Snakepit p50 / p99 µs | calls/s | Snakepit, Unix socket p50 / p99 µs | calls/s "
        "| grpcio worker p50 / p99 µs | calls/s | port p50 / p99 µs | calls/s "
        "| p50 ratio vs grpcio / port (TCP; Unix) | calls/s ratio vs grpcio / port (TCP; Unix) |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for pool in (1, 2, 4):
        for c in (1, 8, 64):
            s, x, g, p = (u(system, pool, c) for system in SYSTEMS)
            if not (s and x and g and p):
                continue
            add(
                f"| {pool} | {c} "
                f"| {fmt(s['p50_us'])} / {fmt(s['p99_us'])} | {fmt(s['calls_per_s'])} "
                f"| {fmt(x['p50_us'])} / {fmt(x['p99_us'])} | {fmt(x['calls_per_s'])} "
                f"| {fmt(g['p50_us'])} / {fmt(g['p99_us'])} | {fmt(g['calls_per_s'])} "
                f"| {fmt(p['p50_us'])} / {fmt(p['p99_us'])} | {fmt(p['calls_per_s'])} "
                f"| {ratio(s['p50_us'], g['p50_us'])} / {ratio(s['p50_us'], p['p50_us'])}; "
                f"{ratio(x['p50_us'], g['p50_us'])} / {ratio(x['p50_us'], p['p50_us'])} "
                f"| {ratio(s['calls_per_s'], g['calls_per_s'])} / {ratio(s['calls_per_s'], p['calls_per_s'])}; "
                f"{ratio(x['calls_per_s'], g['calls_per_s'])} / {ratio(x['calls_per_s'], p['calls_per_s'])} |"
            )
    add("")
    counts = ", ".join(str(u("snakepit", 1, c)["calls"]) for c in (1, 8, 64) if u("snakepit", 1, c))
    add(
        f"Calls per configuration and system: {counts} at concurrency 1, 8, 64, after a warm-up, "
        "in 4 rounds that alternate between the systems (so that they share the machine's "
        "changing conditions), merged."
    )
    add("")

    add("## CPU per call")
    add("")
    add(
        "CPU time of every process on the machine (`/proc/stat`: user, system and interrupts; "
        "the BEAM, the NIF's threads and the Python workers alike) during the unary runs, "
        f"divided by the calls made. With {mach['nproc']} CPUs, no system can serve more than "
        f"{mach['nproc']} × 1 000 000 ÷ (µs per call) calls per second: the ceiling column."
    )
    add("")
    add("| system | pool 1, conc. 1: µs per call | pool 4, conc. 64: µs per call | ceiling, calls/s | measured, calls/s |")
    add("|---|---|---|---|---|")
    for system in SYSTEMS:
        one, many = u(system, 1, 1), u(system, 4, 64)
        if not (one and many and "cpu_us_per_call" in many):
            continue
        ceiling = mach["nproc"] * 1e6 / many["cpu_us_per_call"]
        add(
            f"| {LABEL[system]} | {one['cpu_us_per_call']:.0f} | {many['cpu_us_per_call']:.0f} "
            f"| {fmt(ceiling)} | {fmt(many['calls_per_s'])} |"
        )
    add("")
    add(
        "At concurrency 64 the machine is saturated, so the rate is the CPUs divided by the "
        "CPU one call costs. 20 000 calls/s on this machine needs at most "
        f"{mach['nproc'] * 1e6 / 20000:.0f} µs of CPU per call, everything included."
    )
    add("")

    add("## Binaries, streams, start-up, memory")
    add("")
    add(
        "| scenario | Snakepit | Snakepit, Unix socket | grpcio worker | port "
        "| ratio vs grpcio (TCP; Unix) | ratio vs port (TCP; Unix) |"
    )
    add("|---|---|---|---|---|---|---|")

    def row(text, figures, key, scale=1.0, digits=0, port=True):
        """A table row of `figures[system][key]`, with ratios to the baselines."""
        v = {k: figures[k][key] / scale if k in figures else None for k in SYSTEMS}
        vs_port = (
            f"{ratio(v['snakepit'], v['port'])}; {ratio(v['snakepit_unix'], v['port'])}" if port else "–"
        )
        add(
            f"| {text} | {fmt(v['snakepit'], digits)} | {fmt(v['snakepit_unix'], digits)} "
            f"| {fmt(v['grpcio_worker'], digits)} | {fmt(v['port'], digits) if port else 'not measured'} "
            f"| {ratio(v['snakepit'], v['grpcio_worker'])}; {ratio(v['snakepit_unix'], v['grpcio_worker'])} "
            f"| {vs_port} |"
        )

    b = raw["binary_1mib"]
    if b:
        row("1 MiB binary round trip, p50 ms (pool 1, 100 calls)", b, "p50_us", 1000, 2)
    s = raw["stream_small"]
    if s:
        row("100 000 small chunks into a callback, chunks/s (median of 3)", s, "chunks_per_s", port=False)
    sr = raw.get("stream_ref") or {}
    if sr:
        add(
            f"| StreamRef `Enum.to_list`, items/s (median of 3): batched, 100 000 items "
            f"| {fmt(sr['batched_snakepit']['items_per_s'])} | {fmt(sr['batched_snakepit_unix']['items_per_s'])} "
            f"| – | – | – | – |"
        )
        add(
            f"| same, one round trip per item (seed 003's protocol), 10 000 items "
            f"| {fmt(sr['per_item_snakepit']['items_per_s'])} | {fmt(sr['per_item_snakepit_unix']['items_per_s'])} "
            f"| – | – | – | – |"
        )
    g = raw["stream_1gib"]
    if g:
        row("1 GiB in 1 MiB chunks (`raw_binaries: true`), MB/s (median of 3)", g, "mb_per_s", port=False)
    st = raw["startup"]
    if st:
        row("pool start to 4 workers ready, median of 3, ms", st, "median_ms")
    mem = raw["memory"]
    if mem:
        row("VM resident memory growth, 1 GiB into a callback sleeping 2 ms per chunk, MiB", mem, "rss_growth_mib", digits=1, port=False)
        add(
            f"| same, callback forcing `:erlang.garbage_collect()` per chunk, MiB "
            f"| {mem['snakepit_gc_per_chunk']['rss_growth_mib']:.1f} | – | – | – | – | – |"
        )
        row("same run, growth of `:erlang.memory(:total)` only, MiB", mem, "growth_mib", digits=1, port=False)
    add("")
    add(
        "Start-up: Snakepit and grpcio worker from `Snakepit.Pool.start_link` call to its return "
        "(all 4 workers printed `GRPC_READY`); port: 4 ports opened and each answered one echo. "
        "Memory: peak of the VM's resident memory (`/proc/self/statm`: BEAM heaps, binaries and "
        "the NIF's own allocations, such as received payloads handed to Elixir without a copy) "
        "sampled at every chunk, minus the value before the stream; `:erlang.memory(:total)` "
        "sees only what the BEAM allocated itself. The Python workers' memory is not included. "
        "The memory run uses the TCP pool only (the stream's flow control does not depend on "
        "the transport). Streams and the port "
        "baseline: the port baseline has no streaming protocol here."
    )
    add("")

    outside_section(add, raw)
    cross_section(add, raw)
    telemetry_section(add, raw)

    add("## Performance targets (this machine)")
    add("")
    add("| target | measured | |")
    add("|---|---|---|")

    def target(text, measured, ok):
        add(f"| {text} | {measured} | {'met' if ok else '**not met**'} |")

    def both(tcp, unix, unit, digits=0):
        """`<tcp> (TCP) / <unix> (Unix socket)`."""
        return f"{fmt(tcp, digits)} {unit} (TCP) / {fmt(unix, digits)} {unit} (Unix socket)"

    s1, x1, g1, p1 = (u(system, 1, 1) for system in SYSTEMS)
    if s1 and x1 and g1 and p1:
        best = min(s1["p50_us"], x1["p50_us"])
        target("unary p50 at concurrency 1 ≤ 125 µs", both(s1["p50_us"], x1["p50_us"], "µs") + ", pool 1", best <= 125)
        sp, xp = g1["p50_us"] / s1["p50_us"], g1["p50_us"] / x1["p50_us"]
        target("≥ 3× faster than the grpcio worker (p50, c=1)", f"{sp:.2f}× (TCP) / {xp:.2f}× (Unix socket)", max(sp, xp) >= 3)
        pr, xr = s1["p50_us"] / p1["p50_us"], x1["p50_us"] / p1["p50_us"]
        target("stretch: within 2× of the hand-written port (p50, c=1)", f"{pr:.2f}× (TCP) / {xr:.2f}× (Unix socket) the port's p50", min(pr, xr) <= 2)
    s64, x64 = u("snakepit", 4, 64), u("snakepit_unix", 4, 64)
    if s64 and x64:
        target(
            "≥ 20 000 calls/s at concurrency 64, pool 4",
            both(s64["calls_per_s"], x64["calls_per_s"], "calls/s"),
            max(s64["calls_per_s"], x64["calls_per_s"]) >= 20000,
        )
    if s:
        target(
            "≥ 200 000 small chunks/s into a callback",
            both(s["snakepit"]["chunks_per_s"], s["snakepit_unix"]["chunks_per_s"], "chunks/s"),
            max(s["snakepit"]["chunks_per_s"], s["snakepit_unix"]["chunks_per_s"]) >= 200000,
        )
    if sr:
        best = max(sr["batched_snakepit"]["items_per_s"], sr["batched_snakepit_unix"]["items_per_s"])
        per_item = max(sr["per_item_snakepit"]["items_per_s"], sr["per_item_snakepit_unix"]["items_per_s"])
        target(
            "StreamRef: ≥ 100 000 items/s through `Enum.to_list`",
            both(sr["batched_snakepit"]["items_per_s"], sr["batched_snakepit_unix"]["items_per_s"], "items/s"),
            best >= 100000,
        )
        target(
            "StreamRef: ≥ 20× one round trip per item",
            f"{best / per_item:.1f}× ({fmt(per_item)} items/s per item)",
            best / per_item >= 20,
        )
    if g:
        target(
            "≥ 1 GB/s with 1 MiB binary chunks",
            both(g["snakepit"]["mb_per_s"], g["snakepit_unix"]["mb_per_s"], "MB/s"),
            max(g["snakepit"]["mb_per_s"], g["snakepit_unix"]["mb_per_s"]) >= 1000,
        )
    if st:
        target(
            "pool of 4 ready within 300 ms",
            both(st["snakepit"]["median_ms"], st["snakepit_unix"]["median_ms"], "ms") + ", median of 3",
            min(st["snakepit"]["median_ms"], st["snakepit_unix"]["median_ms"]) <= 300,
        )
    if mem:
        grow = mem["snakepit"]["rss_growth_mib"]
        target(
            "memory growth < 64 MiB in the slow-consumer run",
            f"{grow:.1f} MiB resident ({mem['snakepit_gc_per_chunk']['rss_growth_mib']:.1f} MiB when the callback forces a GC)",
            grow < 64,
        )
    ou = outside_unary(raw, "python_client", 1)
    if ou:
        target(
            "outside: unary p50 ≤ 0.5 ms from the Python client (`SnakepitClient`, c=1)",
            f"{fmt(ou['p50_us'])} µs, pool 1",
            ou["p50_us"] <= 500,
        )
    os_ = raw.get("outside_stream") or {}
    if "python_client" in os_:
        grpcio = os_.get("grpcio_client", {}).get("chunks_per_s")
        target(
            "outside: ≥ 100 000 small chunks/s streamed to a Python consumer (`SnakepitClient.stream`)",
            f"{fmt(os_['python_client']['chunks_per_s'])} chunks/s (grpcio client: {fmt(grpcio)} chunks/s)",
            os_["python_client"]["chunks_per_s"] >= 100000,
        )
    for text, measured, ok in cross_targets(raw.get("cross_node") or {}):
        target(text, measured, ok)
    for text, measured, ok in telemetry_targets(raw.get("telemetry") or {}):
        target(text, measured, ok)
    add("")
    add(
        "A target counts as met when Snakepit meets it over either transport; "
        "`transport: :unix` is one pool option away."
    )
    add("")
    ladder_path = os.path.join(ROOT, "_build", "bench-ladder.json")
    if os.path.exists(ladder_path):
        with open(ladder_path) as f:
            ladder = json.load(f)
        raw["latency_ladder"] = ladder
        add("## Where the time of one call goes (concurrency 1)")
        add("")
        add(
            "`native/snakepit_core/examples/latency_ladder.rs`, run in the same invocation: "
            f"medians of {ladder['rounds']} alternating rounds of {ladder['calls_per_round']} calls. "
            "Each rung adds one layer of the path of `Snakepit.execute/3`."
        )
        add("")
        add("| rung | p50 µs |")
        add("|---|---|")
        add(f"| TCP ping-pong of 64 bytes between two processes, placed by the kernel | {ladder['tcp_ping_pong_us']:.0f} |")
        add(f"| same, both processes pinned to one CPU | {ladder['tcp_ping_pong_one_cpu_us']:.0f} |")
        add(f"| gRPC `GetVersion` from a Rust (tonic) client to a Snakepit worker, answered without Python | {ladder['grpc_get_version_us']:.0f} |")
        add(f"| gRPC `echo` from the same client: plus the worker's Python thread, the GIL and the tool | {ladder['grpc_echo_us']:.0f} |")
        if s1:
            add(f"| `Snakepit.execute/3` from Elixir (pool 1, table above): plus the NIF, its runtime and the BEAM | {s1['p50_us']:.0f} |")
        if "unix_ping_pong_us" in ladder:
            add(f"| Unix-socket ping-pong of 64 bytes between two processes, placed by the kernel | {ladder['unix_ping_pong_us']:.0f} |")
            add(f"| gRPC `GetVersion` over a Unix socket (`transport: :unix`) | {ladder['grpc_unix_get_version_us']:.0f} |")
            add(f"| gRPC `echo` over a Unix socket | {ladder['grpc_unix_echo_us']:.0f} |")
            if x1:
                add(f"| `Snakepit.execute/3` from Elixir over a Unix socket (pool 1) | {x1['p50_us']:.0f} |")
        add("")
        add(
            "The first two rungs are the machine, not Snakepit: a message that wakes a process "
            "sleeping on another CPU costs about "
            f"{(ladder['tcp_ping_pong_us'] - ladder['tcp_ping_pong_one_cpu_us']) / 2:.0f} µs here "
            "(half the difference of the two ping-pongs), against a few µs when both sides share a CPU. "
            "A call from Elixir to Python crosses several threads (the caller's scheduler, the NIF's "
            "runtime, the worker's HTTP/2 thread, its Python thread, and back), and each crossing "
            "that finds its thread asleep pays that price. The gRPC rungs are measured from inside "
            "the client's runtime; from Elixir the call also enters the NIF's runtime from a "
            "scheduler and its reply wakes that scheduler again: two more crossings, which is most "
            "of the last step. That, more than any code on the path, is what keeps the "
            "concurrency-1 figure above the 125 µs target on this machine: even the hand-written "
            "port, one pipe each way and no thread hand-off on either side, takes "
            + (f"{p1['p50_us']:.0f} µs " if p1 else "about as long ")
            + "here. A Unix socket takes "
            "the kernel's TCP stack off the path, and the kernel wakes the reader of a Unix "
            "socket on the writer's CPU when it can (compare the two free ping-pongs), so both "
            "socket crossings of a call get cheaper."
        )
        add("")
        add(
            "The crossings cost CPU as well as time: waking a thread whose CPU is idle makes "
            "the waker signal that CPU, which a virtual machine pays for in the hypervisor. "
            "The table *CPU per call* shows it: "
            + (
                f"one Snakepit call costs {s1['cpu_us_per_call']:.0f} µs of CPU at concurrency 1, "
                "where the threads on its path fall asleep between calls (this includes the "
                "BEAM's schedulers spinning a while before they sleep, which they do by default "
                f"to answer sooner), and {u('snakepit', 4, 64)['cpu_us_per_call']:.0f} µs at "
                "concurrency 64, where they stay busy. "
                if s1 and "cpu_us_per_call" in s1 and u("snakepit", 4, 64)
                else ""
            )
            + "At concurrency 64 the rate is capped by that CPU cost; the hand-written port "
            "does less work per call (no HTTP/2 framing, no thread hand-off in either "
            "process), which is what a gRPC worker gives up for multiplexed streams, "
            "cancellation, deadlines and one protocol for every kind of call."
        )
        add("")
    add("![unary latency distributions](latency.png)")
    add("")

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "latest.md"), "w") as f:
        f.write("\n".join(lines))
    summary = dict(raw, date=now, command=COMMAND, machine=mach)
    with open(os.path.join(OUT, "latest.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")

    # Latency CDFs per system: concurrency 1 (pool 1) and concurrency 64 (pool 4).
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    colors = {"snakepit": "tab:green", "snakepit_unix": "tab:olive", "grpcio_worker": "tab:orange", "port": "tab:blue"}
    for ax, (pool, c) in zip(axes[:2], [(1, 1), (4, 64)]):
        for system in SYSTEMS:
            data = sorted(samples.get((system, pool, c), []))
            if not data:
                continue
            ys = [(i + 1) / len(data) for i in range(len(data))]
            p50 = data[len(data) // 2]
            ax.plot(data, ys, label=f"{LABEL[system]} (p50 {p50:.0f} µs)", color=colors[system])
        ax.set_xscale("log")
        ax.set_xlabel("latency per call, µs (log scale)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(f"unary echo, concurrency {c}, pool {pool}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    outside_plot = {
        "in_beam": ("in the BEAM, Snakepit.execute/3", "tab:green"),
        "python_client": ("Python client, SnakepitClient", "tab:purple"),
        "grpcio_client": ("grpcio client", "tab:red"),
    }
    for system, (name, color) in outside_plot.items():
        data = sorted(outside_samples.get((system, 1), []))
        if data:
            ys = [(i + 1) / len(data) for i in range(len(data))]
            label = f"{name} (p50 {data[len(data) // 2]:.0f} µs)"
            ax.plot(data, ys, label=label, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, µs (log scale)")
    ax.set_ylabel("fraction of calls")
    ax.set_title("unary echo through the bridge, concurrency 1, pool 1")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Snakepit vs baselines — {mach['nproc']} CPUs, {mach['cpu_model']}, {now}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "latency.png"), dpi=90)
    print(f"wrote {OUT}/latest.md, latest.json, latency.png", file=sys.stderr)


if __name__ == "__main__":
    main()
