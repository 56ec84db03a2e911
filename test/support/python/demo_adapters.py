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
