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
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 ships venv support separately.
    say "installing python3-venv with apt-get"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check pytest
fi
(cd priv/python && "$venv/bin/python" -m pytest -q tests)

say "Elixir: mix test"
mix test
