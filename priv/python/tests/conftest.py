"""Make ``priv/python`` importable for the tests."""

from __future__ import annotations

import sys
from pathlib import Path

PYTHON_ROOT = Path(__file__).resolve().parent.parent

if str(PYTHON_ROOT) not in sys.path:
    sys.path.insert(0, str(PYTHON_ROOT))


# -- the bridge server, for the bridge client tests ---------------------------

import os  # noqa: E402
import queue  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
from typing import IO, Callable, Iterator, List, Optional  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = PYTHON_ROOT.parent.parent
BRIDGE_READY_TIMEOUT = 30.0


def bridge_binary() -> Path:
    """The standalone bridge server built by ``cargo build --release`` (``$SNAKEPIT_BRIDGE_BIN`` overrides)."""
    override = os.environ.get("SNAKEPIT_BRIDGE_BIN")
    if override:
        return Path(override)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return target / "release" / "snakepit-bridge"


class BridgeServer:
    """A running ``snakepit-bridge`` process: ``address`` and ``token`` to reach it."""

    def __init__(self, *args: str) -> None:
        binary = bridge_binary()
        if not binary.is_file():
            pytest.fail(
                f"the bridge server binary {binary} is missing: build it with `cargo build --release` "
                "(scripts/test.sh does)",
                pytrace=False,
            )
        self.token = secrets.token_hex(32)
        self.stderr: List[str] = []
        self.proc = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, SNAKEPIT_TOKEN=self.token),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        port = None
        while port is None:
            try:
                line = lines.get(timeout=BRIDGE_READY_TIMEOUT)
            except queue.Empty:
                self.stop()
                pytest.fail(f"no BRIDGE_READY within {BRIDGE_READY_TIMEOUT}s; stderr:\n{self.stderr_text()}")
            if line is None:
                code = self.proc.wait()
                pytest.fail(f"the bridge server exited ({code}) before BRIDGE_READY; stderr:\n{self.stderr_text()}")
            elif line.startswith("BRIDGE_READY:"):
                port = int(line.split(":", 1)[1])
        self.port = port
        self.address = f"127.0.0.1:{port}"

    @staticmethod
    def _pump(stream: IO[bytes], put: Callable[[Optional[str]], None]) -> None:
        for raw in iter(stream.readline, b""):
            put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        put(None)

    def stderr_text(self) -> str:
        return "\n".join(line for line in self.stderr if line is not None)

    def stop(self) -> None:
        """Close its stdin (the server exits on EOF) and wait for it."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the bridge server did not exit within 10 s of stdin EOF") from None
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


@pytest.fixture(scope="session")
def bridge_server() -> Iterator[BridgeServer]:
    """One bridge server for the whole test run."""
    server = BridgeServer()
    yield server
    server.stop()
    assert server.proc.returncode == 0, server.stderr_text()


@pytest.fixture(scope="session")
def quota_server() -> Iterator[BridgeServer]:
    """A bridge server holding at most one session with at most one variable."""
    server = BridgeServer("--max-sessions", "1", "--max-variables", "1")
    yield server
    server.stop()
