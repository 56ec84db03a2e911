#!/usr/bin/env bash
# The main demo: progress chunks stream from a Python generator into an Elixir
# callback, each printed with its arrival time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
mix run examples/stream_progress_demo.exs
