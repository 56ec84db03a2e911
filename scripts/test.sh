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

say "Rust: fuzzing the decoders for 10 s (bash: cargo run --release -p snakepit_core --example fuzz_decoders -- SECONDS)"
cargo run --release --locked --quiet -p snakepit_core --example fuzz_decoders -- 10

say "Python: pytest"
# The bridge client tests run the standalone bridge server (mix compile builds
# only the NIF and the Python extension).
cargo build --release --locked --quiet -p snakepit_core --bin snakepit-bridge
venv="$root/_build/pytest-venv"
# grpcio: an independent gRPC client in the tests, never needed at run time.
if ! "$venv/bin/python" -c "import pytest, grpc" >/dev/null 2>&1; then
  python_venv "$venv" pytest grpcio
fi
(cd priv/python && "$venv/bin/python" -m pytest -q tests)

say "Python package: pip install priv/python, then the reactive example with it"
# Builds the extension with maturin into a fresh venv: what an outside
# program does. The example then imports the installed package only.
pip_venv="$root/_build/pip-venv"
python_venv "$pip_venv" "$root/priv/python"
(cd / && "$pip_venv/bin/python" -c 'import snakepit_bridge._native, sys; sys.exit("/site-packages/" not in snakepit_bridge._native.__file__)')
SNAKEPIT_EXAMPLE_PYTHON="$pip_venv/bin/python" mix run examples/reactive_node.exs >"$root/_build/pip-example.log"
grep -q "Reactive example done." "$root/_build/pip-example.log" ||
  { cat "$root/_build/pip-example.log"; say "the reactive example failed with the installed package"; exit 1; }

say "Elixir: mix test"
mix test
