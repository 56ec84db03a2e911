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

say "Python: mypy, stubtest, ruff, pytest"
# The bridge client tests run the standalone bridge server (mix compile builds
# only the NIF and the Python extension).
cargo build --release --locked --quiet -p snakepit_core --bin snakepit-bridge
# ExUnit's outside client (test/snakepit/outside_test.exs).
cargo build --release --locked --quiet -p snakepit_core --example outside_call
venv="$root/_build/pytest-venv"
# grpcio and grpcio-tools: an independent gRPC client in the tests, with stubs
# generated from proto/, never needed at run time; NumPy: for the universal
# call's tests. ExUnit runs these on this venv (SNAKEPIT_TEST_PYTHON).
# mypy and ruff are pinned: a new release must not fail an unchanged tree.
# mypy 1.20 is the last to check code against Python 3.9.
mypy_version=1.20.2
ruff_version=0.17.6
if ! "$venv/bin/python" - "$mypy_version" "$ruff_version" >/dev/null 2>&1 <<'PY'; then
import sys
from importlib.metadata import version
import pytest, grpc, grpc_tools, numpy
sys.exit(version("mypy") != sys.argv[1] or version("ruff") != sys.argv[2])
PY
  python_venv "$venv" pytest grpcio grpcio-tools numpy "mypy==$mypy_version" "ruff==$ruff_version"
fi
(
  cd priv/python
  # The package strictly, against the oldest Python it supports; the tests
  # against the venv's Python (pytest's own sources need a newer one), every
  # body checked but annotations not required. Settings: pyproject.toml.
  "$venv/bin/python" -m mypy --python-version 3.9 snakepit_bridge
  "$venv/bin/python" -m mypy --allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls --allow-any-generics tests
  # _native.pyi against the extension mix compile built next to it.
  "$venv/bin/python" -m mypy.stubtest snakepit_bridge._native --mypy-config-file pyproject.toml --allowlist stubtest_allowlist.txt
  "$venv/bin/ruff" check --quiet .
  "$venv/bin/ruff" format --quiet --check .
  "$venv/bin/python" -m pytest -q tests
)

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
SNAKEPIT_TEST_PYTHON="$venv/bin/python" mix test
