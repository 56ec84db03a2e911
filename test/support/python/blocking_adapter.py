"""An adapter whose tool blocks in C, where ``ToolCancelled`` cannot reach it.

Tests use it to check that timed-out calls of such a tool do not pile up
threads in the worker: the worker is recycled instead.
"""

import threading
import time

from snakepit_bridge.base_adapter import BaseAdapter, tool


class BlockingAdapter(BaseAdapter):
    """Tools that block in C, wait in Python, and report the worker's threads."""

    @tool(description="Sleep in one C call (not interruptible)")
    def block(self, seconds: float = 60.0) -> float:
        """Sleep ``seconds`` in a single ``time.sleep`` and return them."""
        time.sleep(seconds)
        return seconds

    @tool(description="Sleep in short steps, then return")
    def steps(self, steps: int = 10, step_ms: int = 100) -> int:
        """Sleep ``steps`` times ``step_ms`` ms and return ``steps``."""
        for _ in range(steps):
            time.sleep(step_ms / 1000)
        return steps

    @tool(description="Number of Python threads")
    def threads(self) -> int:
        """Return ``threading.active_count()``."""
        return threading.active_count()
