"""An adapter whose worker ignores SIGTERM and starts child processes.

Tests use it to check that stopping escalates to SIGKILL after the grace
period and that a worker's children die with it.
"""

import signal
import subprocess

from snakepit_bridge.base_adapter import BaseAdapter, tool

signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StubbornAdapter(BaseAdapter):
    def __init__(self):
        super().__init__()
        self.children = []

    @tool(description="Start a long-lived child process and return its pid")
    def spawn_child(self) -> int:
        child = subprocess.Popen(["sleep", "300"])
        self.children.append(child)
        return child.pid
