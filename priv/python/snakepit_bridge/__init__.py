"""Python side of the Snakepit bridge: adapters, tools and the worker entry point.

Adapters subclass :class:`BaseAdapter` and expose methods decorated with
:func:`tool`; a worker (``python -m snakepit_bridge.worker``) serves them over
gRPC through the native extension ``snakepit_bridge._native``.
"""

from __future__ import annotations

from .base_adapter import BaseAdapter, tool
from .cancellation import CallHandle
from .errors import ToolCancelled, ToolFailure
from .session_context import SessionContext
from .stream_chunk import StreamChunk

__all__ = [
    "BaseAdapter",
    "tool",
    "StreamChunk",
    "ToolFailure",
    "ToolCancelled",
    "CallHandle",
    "SessionContext",
    "__version__",
    "PROTOCOL_VERSION",
]

#: Version of the ``snakepit_bridge`` package.
__version__ = "0.1.0"
#: Version of the worker ⇄ Elixir protocol implemented by this package.
PROTOCOL_VERSION = "1"
