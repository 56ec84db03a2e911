"""Adapters that misbehave the way real code does: floods of output, child
processes left running, curiosity about the environment.

Tests use them to check that worker output reaches Logger through a bounded
path and that nothing a worker started outlives the VM.
"""

import os
import subprocess
import sys

from snakepit_bridge import SessionContext
from snakepit_bridge.base_adapter import BaseAdapter, tool


def _print_bulk(out, total_bytes: int, line_bytes: int) -> int:
    """Write ``total_bytes`` of ``line_bytes``-long lines to ``out`` in 1 MiB writes."""
    line = b"x" * (line_bytes - 1) + b"\n"
    block = line * max(1, (1 << 20) // line_bytes)
    written = 0
    while written < total_bytes:
        piece = block[: total_bytes - written]
        out.write(piece)
        written += len(piece)
    out.flush()
    return written


class PrinterAdapter(BaseAdapter):
    """Prints as much as it is asked to, on stdout (fd 1) or stderr."""

    @tool(description="Print total_bytes of lines of line_bytes each")
    def flood(self, total_bytes: int, line_bytes: int = 100, stream: str = "stderr") -> int:
        # sys.stdout is redirected to stderr in a worker; fd 1 is the real stdout.
        out = os.fdopen(os.dup(1), "wb") if stream == "stdout" else sys.stderr.buffer
        try:
            return _print_bulk(out, total_bytes, line_bytes)
        finally:
            if stream == "stdout":
                out.close()

    @tool(description="Print one line on stderr")
    def say(self, text: str) -> bool:
        print(text, file=sys.stderr, flush=True)
        return True


class LoudInitAdapter(BaseAdapter):
    """Prints SNAKEPIT_TEST_INIT_BYTES bytes of lines while it is created."""

    def __init__(self):
        super().__init__()
        _print_bulk(sys.stderr.buffer, int(os.environ.get("SNAKEPIT_TEST_INIT_BYTES", "0")), 100)

    @tool(description="Answer")
    def ping(self) -> str:
        return "pong"


class SpawnerAdapter(BaseAdapter):
    """Starts child processes and reports what they (and the tool) can see."""

    @tool(description="Start n `sleep` processes; returns their pids")
    def spawn_sleepers(self, n: int = 6, seconds: int = 300) -> list:
        return [subprocess.Popen(["sleep", str(seconds)]).pid for _ in range(n)]

    @tool(description="Where the node's token can be seen from a tool")
    def token_view(self, token: str) -> dict:
        child_env = subprocess.run(["env"], capture_output=True, check=True).stdout
        with open(f"/proc/{os.getpid()}/environ", "rb") as f:
            initial_env = f.read()
        return {
            "os_environ": os.environ.get("SNAKEPIT_TOKEN"),
            "in_os_environ_values": any(token in value for value in os.environ.values()),
            "in_subprocess_env": token.encode() in child_env,
            "in_proc_environ": token.encode() in initial_env,
        }

    @tool(description="Set and read back a session variable")
    def session_roundtrip(self, value: int) -> int:
        ctx = self.session_context
        ctx.set_variable("n", value)
        return ctx.get_variable("n")

    @tool(description="Connect to a session from tool code, as a program would, and write to it")
    async def connect_and_set(self, session_id: str, value: int) -> int:
        # An explicit timeout takes the path that reads address and token itself.
        async with SessionContext.connect(session_id=session_id, timeout=10) as session:
            await session.set_variable("m", value)
            return await session.get_variable("m")
