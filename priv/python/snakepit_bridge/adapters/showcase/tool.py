"""Re-exports of :func:`tool` and :class:`StreamChunk` for adapter authors."""

from __future__ import annotations

from snakepit_bridge.base_adapter import tool
from snakepit_bridge.stream_chunk import StreamChunk

__all__ = ["tool", "StreamChunk"]
