#!/usr/bin/env bash
# Snakepit benchmarks side by side with two baselines (a pure-Python grpcio
# worker and a hand-written Port). One command, from the repository root or
# anywhere:
#
#   bash bench/run.sh
#
# Prepares Elixir and the compiled project (scripts/setup.sh), a bench-only
# venv in _build/bench-venv (grpcio, grpcio-tools, protobuf, matplotlib), the
# Python code generated from proto/ into _build/bench-gen (for the grpcio
# worker baseline and the grpcio client of the bridge), then runs
# bench/run.exs and writes bench/results/latest.{md,json} and latency.png.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh

venv="$root/_build/bench-venv"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import grpc, grpc_tools, google.protobuf, matplotlib' 2>/dev/null; then
  say "creating the bench venv in _build/bench-venv (grpcio, grpcio-tools, protobuf, matplotlib)"
  python_venv "$venv" grpcio grpcio-tools protobuf matplotlib
fi

say "generating Python gRPC code from proto/snakepit/v1/{worker,bridge}.proto into _build/bench-gen"
gen="$root/_build/bench-gen"
rm -rf "$gen"
mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$gen" --grpc_python_out="$gen" \
  proto/snakepit/v1/worker.proto proto/snakepit/v1/bridge.proto

say "running the benchmarks (about a minute or two)"
mix run bench/run.exs

say "latency ladder: TCP ping-pong, then gRPC to a worker from Rust, without Elixir"
cargo build --release --locked --quiet -p snakepit_core --example latency_ladder
SNAKEPIT_BENCH_PYTHON="$venv/bin/python" "${CARGO_TARGET_DIR:-$root/target}/release/examples/latency_ladder" \
  "$root/_build/bench-ladder.json"

say "writing bench/results"
"$venv/bin/python" bench/report.py
say "done: bench/results/latest.md"
