"""Adapters that move a lot of data, for the streaming and binary tests."""

import time

from snakepit_bridge import StreamChunk
from snakepit_bridge.base_adapter import BaseAdapter, tool


class BulkAdapter(BaseAdapter):
    def __init__(self):
        super().__init__()
        self._held = []

    @tool(description="Allocate and keep `mb` MiB, written so that it is resident")
    def hold_memory(self, mb: int):
        self._held.append(b"\x01" * (mb * 1024 * 1024))
        return sum(len(block) for block in self._held) // (1024 * 1024)

    @tool(description="Yield `count` chunks of `size` bytes", supports_streaming=True)
    def stream_bytes(self, count: int = 10, size: int = 1024):
        block = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for _ in range(count):
            yield block

    @tool(description="Return one result of `size` bytes")
    def big_result(self, size: int) -> bytes:
        return b"\x5a" * size

    @tool(description="Yield `count` small JSON chunks", supports_streaming=True)
    def many_chunks(self, count: int = 1000):
        for i in range(count):
            yield {"i": i}

    @tool(description="Yield once, then stay silent for `silence_ms`", supports_streaming=True)
    def then_silence(self, silence_ms: int = 10_000, marker_path: str = ""):
        try:
            yield {"hello": True}
            # Short sleeps: a stop request lands between two of them (it
            # cannot interrupt one long sleep inside C).
            for _ in range(silence_ms // 10):
                time.sleep(0.01)
            yield {"late": True}
        finally:
            if marker_path:
                with open(marker_path, "w") as marker:
                    marker.write("closed")

    @tool(description="Yield each of `chunks` as given, or wrapped in StreamChunk", supports_streaming=True)
    def yield_chunks(self, chunks: list, wrap: bool = False, metadata: dict = None, marker_path: str = ""):
        try:
            for chunk in chunks:
                yield StreamChunk(data=chunk, metadata=metadata or {}) if wrap else chunk
        finally:
            if marker_path:
                with open(marker_path, "w") as marker:
                    marker.write("closed")


class DuplexAdapter(BaseAdapter):
    """Duplex tools that end on their own terms."""

    @tool(description="Wait `delay_ms`, then count every input", supports_streaming=True)
    def count_inputs_later(self, inputs, delay_ms: int = 300):
        # Busy first: the inputs sent meanwhile pile up unread in the worker.
        time.sleep(delay_ms / 1000)
        yield {"count": sum(1 for _ in inputs)}

    @tool(description="Echo the first `n` inputs, then stop reading", supports_streaming=True)
    def take_inputs(self, inputs, n: int = 3):
        for index in range(n):
            yield {"index": index, "input": next(inputs)}

    @tool(description="Echo inputs, raising at input `fail_at`", supports_streaming=True)
    def fail_on_input(self, inputs, fail_at: int = 2):
        for index, value in enumerate(inputs):
            if index == fail_at:
                raise ValueError(f"cannot handle input {index}")
            yield {"index": index}
