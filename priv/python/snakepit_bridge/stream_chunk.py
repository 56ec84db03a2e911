"""The :class:`StreamChunk` envelope that streaming tools may yield."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

__all__ = ["StreamChunk"]


@dataclass
class StreamChunk:
    """One chunk of a streaming tool's output, with explicit control over framing.

    Streaming tools may yield plain values (usually dicts); yielding a
    ``StreamChunk`` instead lets the tool mark the final chunk explicitly and
    attach string metadata that travels beside the payload.

    Attributes:
        data: The chunk payload. ``bytes`` are sent raw; anything else is
            encoded as JSON.
        is_final: Whether this is the last chunk of the stream.
        metadata: String key/value pairs sent with the chunk (non-string
            values are converted with ``str()``).
    """

    data: Any = None
    is_final: bool = False
    metadata: Dict[str, str] = field(default_factory=dict)
