"""End-to-end: a real worker process with the native gRPC server.

Needs the ``snakepit_bridge._native`` extension to be built.
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Optional

import pytest

PYTHON_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


def _pump_lines(stream: IO[bytes], lines: queue.Queue[Optional[str]]) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
    lines.put(None)


def _connect(announced: str) -> socket.socket:
    """A connection to what a ready line announced: a port, or ``unix:@<name>``."""
    if announced.startswith("unix:@"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect("\0" + announced[len("unix:@") :])  # the abstract namespace
        return sock
    port = int(announced)
    assert 0 < port < 65536
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_worker_serves_and_exits_when_stdin_closes(transport: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(PYTHON_ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakepit_bridge.worker",
            "--adapter",
            "snakepit_bridge.adapters.showcase.ShowcaseAdapter",
            "--worker-id",
            "native-test",
            "--transport",
            transport,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(PYTHON_ROOT),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdout_lines: queue.Queue[Optional[str]] = queue.Queue()
    stderr_lines: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=_pump_lines, args=(proc.stdout, stdout_lines), daemon=True).start()
    threading.Thread(target=_pump_lines, args=(proc.stderr, stderr_lines), daemon=True).start()

    def stderr_text() -> str:
        collected = []
        while not stderr_lines.empty():
            line = stderr_lines.get_nowait()
            if line is not None:
                collected.append(line)
        return "\n".join(collected)

    try:
        announced = None
        while announced is None:
            try:
                line = stdout_lines.get(timeout=READY_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no GRPC_READY within {READY_TIMEOUT}s; stderr:\n{stderr_text()}") from None
            if line is None:
                raise AssertionError(f"worker exited ({proc.wait()}) before GRPC_READY; stderr:\n{stderr_text()}")
            if line.startswith("GRPC_READY:"):
                announced = line.split(":", 1)[1]
        assert announced.startswith("unix:@") == (transport == "unix"), announced

        with _connect(announced):
            pass

        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()
