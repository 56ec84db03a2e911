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


def main() -> None:
    with open(RAW) as f:
        raw = json.load(f)

    samples = {}
    unary = []
    for r in raw["unary"]:
        samples[(r["system"], r["pool_size"], r["concurrency"])] = r.pop("samples")
        unary.append(r)
    raw["unary"] = unary
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"snakepit": "tab:green", "snakepit_unix": "tab:olive", "grpcio_worker": "tab:orange", "port": "tab:blue"}
    for ax, (pool, c) in zip(axes, [(1, 1), (4, 64)]):
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
    fig.suptitle(f"Snakepit vs baselines — {mach['nproc']} CPUs, {mach['cpu_model']}, {now}", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "latency.png"), dpi=90)
    print(f"wrote {OUT}/latest.md, latest.json, latency.png", file=sys.stderr)


if __name__ == "__main__":
    main()
