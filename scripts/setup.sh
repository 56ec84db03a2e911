#!/usr/bin/env bash
# Prepares a Debian machine to build and run Snakepit, then compiles it.
# Safe to run again: it only installs what is missing.
#
#   Elixir/Erlang   apt-get (Debian's elixir and erlang-dev packages)
#   Rust            must already be installed (rustup); ~/.cargo/bin is used
#   Python          python3 >= 3.9; workers need no pip packages
#
# Source it (`. scripts/setup.sh`) to keep its PATH; the other scripts do.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! command -v mix >/dev/null 2>&1 || ! command -v erl >/dev/null 2>&1; then
  say "installing Elixir and Erlang with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq elixir erlang-dev >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  say "cargo was not found: install Rust with rustup (https://rustup.rs), then run this again"
  exit 1
fi

if ! command -v python3 >/dev/null 2>&1; then
  say "installing python3 with apt-get"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 >/dev/null
fi
python3 - <<'PY' || { say "Python 3.9 or newer is required"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 9) else 1)
PY

# python_venv DIR PACKAGE...: a virtualenv in DIR with PACKAGEs installed,
# made only when missing. Debian's python3 ships venv support separately.
python_venv() {
  local venv=$1
  shift
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    say "installing python3-venv with apt-get"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

say "compiling (the first build of the Rust workspace takes a few minutes)"
cd "$root"
mix compile
