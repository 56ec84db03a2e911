"""The Snakepit adapter the benchmarks call: the same tools as the baselines."""

import time
from typing import Any, Dict, Iterator

from snakepit_bridge.base_adapter import BaseAdapter, tool


class BenchAdapter(BaseAdapter):
    @tool(description="Return the arguments unchanged")
    def echo(self, **kwargs: Any) -> Dict[str, Any]:
        return kwargs

    @tool(description="Return the binary parameter `data` unchanged, as bytes")
    def echo_bytes(self, data: bytes) -> bytes:
        return data

    @tool(description="Yield {'number': i} for i in 0..count-1", supports_streaming=True)
    def stream_numbers(self, count: int = 10) -> Iterator[Dict[str, int]]:
        for i in range(count):
            yield {"number": i}

    @tool(
        description="Yield {'number': i, 't_ns': time.time_ns()} for i in 0..count-1, each chunk stamped as it is "
        "made, every `every_us` µs (0: as fast as the consumer takes them)",
        supports_streaming=True,
    )
    def stream_stamped(self, count: int = 10, every_us: int = 0) -> Iterator[Dict[str, int]]:
        pause = every_us / 1_000_000
        for i in range(count):
            if pause:
                time.sleep(pause)
            yield {"number": i, "t_ns": time.time_ns()}

    @tool(description="Yield `count` chunks of `size` bytes", supports_streaming=True)
    def stream_bytes(self, count: int = 10, size: int = 1024) -> Iterator[bytes]:
        block = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for _ in range(count):
            yield block
