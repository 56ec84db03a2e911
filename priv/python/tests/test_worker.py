from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import pytest

from snakepit_bridge.adapters.showcase import ShowcaseAdapter
from snakepit_bridge.worker import load_adapter_class

PYTHON_ROOT = Path(__file__).resolve().parent.parent


def run_worker(*args: str) -> Tuple[int, str, str]:
    """Run the worker with stdin held open (EOF on stdin would make it exit 0)."""
    env = dict(os.environ, PYTHONPATH=str(PYTHON_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_bridge.worker", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(PYTHON_ROOT),
    )
    try:
        code = proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        return code, proc.stdout.read().decode(), proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_missing_adapter_module_exits_1() -> None:
    code, stdout, stderr = run_worker("--adapter", "nope.Missing")
    assert code == 1
    assert stdout == ""
    assert (
        "snakepit_bridge.worker: cannot load adapter 'nope.Missing': "
        "ModuleNotFoundError: No module named 'nope'" in stderr
    )
    assert "Traceback (most recent call last)" in stderr


def test_missing_adapter_class_exits_1() -> None:
    code, _, stderr = run_worker("--adapter", "snakepit_bridge.adapters.showcase.Missing", "--worker-id", "w")
    assert code == 1
    assert "cannot load adapter 'snakepit_bridge.adapters.showcase.Missing': AttributeError" in stderr


def test_load_adapter_class() -> None:
    assert load_adapter_class("snakepit_bridge.adapters.showcase.ShowcaseAdapter") is ShowcaseAdapter
    with pytest.raises(TypeError):
        load_adapter_class("snakepit_bridge.worker.main")
    with pytest.raises(ValueError):
        load_adapter_class("NoDots")
