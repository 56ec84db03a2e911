"""Python side of the Snakepit bridge: adapters, tools and the worker entry point.

Adapters subclass :class:`BaseAdapter` and expose methods decorated with
:func:`tool`; a worker (``python -m snakepit_bridge.worker``) serves them over
gRPC through the native extension ``snakepit_bridge._native``. Tools reach
their session's variables and the Elixir tools through
``self.session_context``; other programs use :class:`Bridge`.
"""

from __future__ import annotations

from .base_adapter import BaseAdapter, tool
from .bridge import Bridge, SessionInfo, Variable, VariableUpdate, VariableWatch, set_process_bridge
from .cancellation import CallHandle
from .errors import (
    BridgeError,
    BridgeTimeout,
    BridgeUnavailable,
    ElixirToolError,
    ElixirToolNotFound,
    InvalidVariable,
    QuotaExceeded,
    SessionEnded,
    SessionNotFound,
    SessionRequired,
    ToolCancelled,
    ToolFailure,
    VariableExists,
    VariableNotFound,
    VersionConflict,
    WatchOverflow,
)
from .limits import PROTOCOL_VERSION
from .session_context import AsyncSessionContext, SessionContext
from .stream_chunk import StreamChunk

__all__ = [
    "BaseAdapter",
    "tool",
    "StreamChunk",
    "ToolFailure",
    "ToolCancelled",
    "CallHandle",
    "SessionContext",
    "AsyncSessionContext",
    "Bridge",
    "Variable",
    "SessionInfo",
    "VariableUpdate",
    "VariableWatch",
    "set_process_bridge",
    "BridgeError",
    "SessionNotFound",
    "SessionRequired",
    "SessionEnded",
    "VariableNotFound",
    "VariableExists",
    "VersionConflict",
    "InvalidVariable",
    "QuotaExceeded",
    "WatchOverflow",
    "ElixirToolError",
    "ElixirToolNotFound",
    "BridgeUnavailable",
    "BridgeTimeout",
    "__version__",
    "PROTOCOL_VERSION",
]

#: Version of the ``snakepit_bridge`` package.
__version__ = "0.1.0"
