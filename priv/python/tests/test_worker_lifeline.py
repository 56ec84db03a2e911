"""A worker takes its whole process group along when its parent goes, and
keeps the node's token from the code it runs.

Real worker processes, started the way the pool starts them: a process group
of their own, stdin a pipe, and on Linux a parent-death signal. Needs the
``snakepit_bridge._native`` extension to be built.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, List

import pytest

from snakepit_bridge import _native

PYTHON_ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1

# The adapter's __init__ starts `sleep` children and writes their pids to a
# file, then reports what it can see of the token.
ADAPTER = textwrap.dedent(
    """
    import os, subprocess
    from snakepit_bridge.base_adapter import BaseAdapter

    class SpawningAdapter(BaseAdapter):
        def __init__(self):
            super().__init__()
            pids = [subprocess.Popen(["sleep", "120"]).pid for _ in range(3)]
            child_env = subprocess.run(["env"], capture_output=True, check=True).stdout.decode()
            with open(os.environ["LIFELINE_PIDS"] + ".tmp", "w") as f:
                f.write(" ".join(map(str, pids)) + "\\n")
                f.write(repr(os.environ.get("SNAKEPIT_TOKEN")) + "\\n")
                f.write(str("lifeline-secret" in child_env) + "\\n")
            os.rename(os.environ["LIFELINE_PIDS"] + ".tmp", os.environ["LIFELINE_PIDS"])
    """
)


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().rsplit(")", 1)[1].lstrip().startswith("Z")
    except FileNotFoundError:
        return False


def _wait_until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def _worker_command() -> List[str]:
    return [sys.executable, "-m", "snakepit_bridge.worker", "--adapter", "lifeline_adapter.SpawningAdapter"]


@pytest.fixture
def setup(tmp_path: Path):
    (tmp_path / "lifeline_adapter.py").write_text(ADAPTER)
    pids_file = tmp_path / "pids"
    env = dict(
        os.environ,
        PYTHONPATH=f"{tmp_path}:{PYTHON_ROOT}",
        LIFELINE_PIDS=str(pids_file),
        SNAKEPIT_TOKEN="lifeline-secret",
    )
    started: List[int] = []
    yield env, pids_file, started
    for pid in started:  # whatever a failed test left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_report(pids_file: Path) -> List[str]:
    assert _wait_until(pids_file.exists, 30), "the adapter did not start its children"
    return pids_file.read_text().splitlines()


def test_stdin_eof_kills_the_group_and_the_token_is_hidden(setup) -> None:
    env, pids_file, started = setup
    worker = subprocess.Popen(
        _worker_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
        preexec_fn=os.setpgrp,  # a group of its own, as the pool starts it
    )
    started.append(worker.pid)
    pids_line, token_seen, child_saw_token = _read_report(pids_file)
    sleepers = [int(p) for p in pids_line.split()]
    started.extend(sleepers)
    assert token_seen == "None"
    assert child_saw_token == "False"
    with open(f"/proc/{worker.pid}/environ", "rb") as f:
        assert b"lifeline-secret" not in f.read()
    assert all(_alive(pid) for pid in sleepers)

    assert worker.stdin is not None
    worker.stdin.close()
    assert worker.wait(timeout=15) == -signal.SIGKILL
    assert _wait_until(lambda: not any(_alive(pid) for pid in sleepers)), "children outlived the worker"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_the_parent_death_signal_kills_the_group(setup) -> None:
    env, pids_file, started = setup
    # The worker's stdin pipe stays open here (this test holds its write end),
    # so only the parent-death signal can tell the worker its parent died.
    stdin_read, stdin_write = os.pipe()
    parent_script = textwrap.dedent(
        f"""
        import ctypes, os, subprocess, sys
        libc = ctypes.CDLL(None, use_errno=True)
        def as_the_pool_does():
            os.setpgrp()
            libc.prctl({PR_SET_PDEATHSIG}, {_native.PARENT_DEATH_SIGNAL})
        worker = subprocess.Popen({_worker_command()!r}, stdin={stdin_read}, stdout=subprocess.DEVNULL,
                                  preexec_fn=as_the_pool_does)
        print(worker.pid, flush=True)
        worker.wait()
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_script], stdout=subprocess.PIPE, env=env, pass_fds=(stdin_read,)
    )
    os.close(stdin_read)
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        started.append(worker_pid)
        sleepers = [int(p) for p in _read_report(pids_file)[0].split()]
        started.extend(sleepers)
        assert all(_alive(pid) for pid in [worker_pid, *sleepers])

        parent.kill()
        parent.wait()
        assert _wait_until(lambda: not any(_alive(pid) for pid in [worker_pid, *sleepers])), (
            "the worker or its children outlived the parent"
        )
    finally:
        os.close(stdin_write)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_hidden_token_still_reaches_the_bridge_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakepit_bridge import environment

    monkeypatch.setattr(environment, "_hidden_token", None)
    monkeypatch.setenv(environment.TOKEN_ENV_VAR, "in-memory-only")
    assert environment.hide_token_from_environment() == "in-memory-only"
    assert environment.TOKEN_ENV_VAR not in os.environ
    assert environment.environment_token() == "in-memory-only"
    # Again: the same token, though the environment no longer has it.
    assert environment.hide_token_from_environment() == "in-memory-only"
    assert os.system(f'test -z "${environment.TOKEN_ENV_VAR}"') == 0
