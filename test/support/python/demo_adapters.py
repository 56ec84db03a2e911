"""Adapters written the way users write them (as in the seeds), for tests."""

import time

from snakepit_bridge.base_adapter import BaseAdapter, tool
from snakepit_bridge.adapters.showcase.tool import StreamChunk


class GreeterAdapter(BaseAdapter):
    """A user adapter living outside the snakepit_bridge package."""

    def __init__(self):
        super().__init__()
        self.greeting = "Hello"

    @tool(description="Greet someone")
    def greet(self, name: str) -> dict:
        return {"text": f"{self.greeting}, {name}!"}

    @tool(description="Count down", supports_streaming=True)
    def countdown(self, start: int = 3):
        for n in range(start, 0, -1):
            yield StreamChunk(data={"n": n}, is_final=(n == 1))
            time.sleep(0.01)

    def execute_tool(self, tool_name, arguments, context):
        """Hand dispatch for tools that are not @tool methods."""
        if tool_name == "shout":
            return arguments["text"].upper()
        raise KeyError(tool_name)


class StatefulAdapter(BaseAdapter):
    """Keeps per-session state in the worker process, as session users do."""

    def __init__(self):
        super().__init__()
        self.counters = {}

    @tool(description="Remember a counter for this session")
    def set_counter(self, value: int) -> dict:
        self.counters[self.session_context.session_id] = value
        return {"value": value}

    @tool(description="Read this session's counter")
    def get_counter(self) -> dict:
        return {"value": self.counters.get(self.session_context.session_id)}

    @tool(description="Which worker process answers")
    def whoami(self) -> dict:
        import os

        return {"worker_id": self.session_context.worker_id, "os_pid": os.getpid()}

    @tool(description="Block for a while, then answer")
    def hold(self, ms: int = 1000) -> dict:
        time.sleep(ms / 1000)
        return {"held_ms": ms}

    @tool(description="Tick until the stream is closed", supports_streaming=True)
    def ticks(self, delay_ms: int = 10):
        n = 0
        while True:
            yield {"tick": n}
            n += 1
            time.sleep(delay_ms / 1000)


class CrashingAdapter(BaseAdapter):
    """A worker that can be told to die, for restart tests."""

    @tool(description="End the worker process at once")
    def crash(self) -> None:
        import os

        os._exit(3)
