#!/usr/bin/env bash
# Runs every test: Rust (cargo test), Python (pytest) and Elixir (ExUnit),
# after the format, lint and warning checks.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export MIX_ENV=test
. scripts/setup.sh

say "checks: mix format, compile warnings, cargo fmt, cargo clippy"
mix format --check-formatted
mix compile --warnings-as-errors --force
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings

say "Rust: cargo test (core crate)"
cargo test --release --locked -p snakepit_core

say "Python: pytest"
venv="$root/_build/pytest-venv"
if [[ ! -x "$venv/bin/pytest" ]]; then
  python_venv "$venv" pytest
fi
(cd priv/python && "$venv/bin/python" -m pytest -q tests)

say "Elixir: mix test"
mix test
