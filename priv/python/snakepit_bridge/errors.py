"""Errors reported back to the caller of a tool, and errors of the node's bridge.

:class:`ToolFailure` and :class:`ToolCancelled` concern the tool call a worker
serves. :class:`BridgeError` and its subclasses are raised by calls *into*
the node's bridge (sessions, session variables, Elixir tools; see
:mod:`snakepit_bridge.bridge`); each carries the machine-readable ``reason``
the node sent (``"version_conflict"``, ...) and the gRPC status ``code``.
"""

from __future__ import annotations

import traceback as _traceback
from typing import Dict, Type

__all__ = [
    "ToolFailure",
    "ToolCancelled",
    "PYTHON",
    "VALIDATION",
    "CANCELLED_BY_CALLER",
    "DEADLINE_EXCEEDED",
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
    "bridge_error",
]

#: Category of a failure raised by the tool's own code (or its result encoding).
PYTHON = "python"
#: Category of a failure caused by the request (unknown tool, bad arguments, ...).
VALIDATION = "validation"

#: Why a call was cancelled: the caller went away (cancelled the RPC, or its
#: process ended).
CANCELLED_BY_CALLER = "cancelled"
#: Why a call was cancelled: its deadline passed.
DEADLINE_EXCEEDED = "deadline_exceeded"


class ToolFailure(Exception):
    """A tool call failed; carries everything the bridge reports to Elixir.

    Tools may raise it themselves to report a failure with a chosen category
    and type; the dispatcher passes it through unchanged.

    Attributes:
        category: ``"python"`` (the tool raised) or ``"validation"`` (the
            request was rejected before/without running the tool).
        error_type: Exception class name or a bridge error code such as
            ``"UnknownTool"`` or ``"InvalidArguments"``.
        message: Human-readable message; also ``str(failure)``.
        traceback: Formatted Python traceback, or ``""``.
    """

    def __init__(self, category: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(category, error_type, message, traceback)
        self.category = category
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ToolFailure({self.category!r}, {self.error_type!r}, {self.message!r})"

    @classmethod
    def from_exception(cls, exc: BaseException) -> ToolFailure:
        """Wrap an exception raised by tool code as a ``"python"`` failure.

        A ``ToolFailure`` is returned unchanged.
        """
        if isinstance(exc, ToolFailure):
            return exc
        formatted = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(PYTHON, type(exc).__name__, str(exc), formatted)


class ToolCancelled(BaseException):
    """The call running this tool was cancelled: its caller went away or its deadline passed.

    The worker raises it *inside* the tool so the tool stops and its ``finally``
    blocks and context managers run: in the thread running a sync tool or
    driving a sync generator, it is raised asynchronously at the next Python
    instruction; async tools see :class:`asyncio.CancelledError` instead.

    It derives from :class:`BaseException`, like :class:`KeyboardInterrupt`, so
    that ``except Exception`` blocks in tool code do not swallow it. Tools may
    catch it to clean up but should re-raise it; a tool that swallows it keeps
    running (the caller has gone anyway and will not see the result), and the
    worker does not raise it a second time.

    Attributes:
        reason: :data:`CANCELLED_BY_CALLER` or :data:`DEADLINE_EXCEEDED`, or
            ``""`` when unknown (an injected exception carries no arguments).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(*((reason,) if reason else ()))
        self.reason = reason

    def __str__(self) -> str:
        if self.reason == DEADLINE_EXCEEDED:
            return "the call's deadline passed"
        if self.reason == CANCELLED_BY_CALLER:
            return "the caller cancelled the call"
        return self.reason or "the call was cancelled"


class BridgeError(Exception):
    """A call into the node's bridge failed.

    Attributes:
        message: Human-readable message; also ``str(error)``.
        reason: Machine-readable reason sent by the node (the
            ``x-snakepit-error`` trailer, e.g. ``"version_conflict"``), or a
            reason of the Python side (``"session_required"``,
            ``"not_configured"``); ``""`` when there is none.
        code: gRPC status code name (``"NOT_FOUND"``, ``"UNAVAILABLE"``, ...),
            or ``""`` for errors raised before anything was sent.
    """

    def __init__(self, message: str, reason: str = "", code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, code={self.code!r})"


class SessionNotFound(BridgeError):
    """The session does not exist (never created, deleted or expired)."""


class SessionRequired(BridgeError):
    """A session operation was attempted by a call that belongs to no session."""


class SessionEnded(BridgeError):
    """The session of a variable watch was deleted or expired; the watch is over."""


class VariableNotFound(BridgeError):
    """No variable has that name or id in the session."""


class VariableExists(BridgeError):
    """A variable with that name is already registered in the session."""


class VersionConflict(BridgeError):
    """The variable is no longer at the expected version; nothing was written."""


class InvalidVariable(BridgeError, ValueError):
    """A value, type, constraint or argument was refused; nothing was written.

    ``reason`` tells which: ``"invalid_value"``, ``"invalid_type"``,
    ``"invalid_constraints"`` or ``"invalid_argument"``. Also a
    :class:`ValueError`.
    """


class QuotaExceeded(BridgeError):
    """The node holds its maximum number of sessions, or the session its maximum number of variables.

    ``reason`` is ``"session_quota_exceeded"`` or ``"variable_quota_exceeded"``.
    """


class WatchOverflow(BridgeError):
    """A variable watch fell too far behind and was ended; watch again (with initial values) to resync."""


class ElixirToolError(BridgeError):
    """An Elixir tool failed.

    Attributes:
        error_type: Kind of failure reported by Elixir (an exception module
            name, or a reason such as ``"tool_not_found"``).
        category: Category reported with the failure (``"elixir"``).
        traceback: Stack trace text, ``""`` when none was sent.
    """

    def __init__(
        self,
        message: str,
        reason: str = "",
        code: str = "",
        *,
        error_type: str = "",
        category: str = "elixir",
        traceback: str = "",
    ) -> None:
        super().__init__(message, reason, code)
        self.error_type = error_type
        self.category = category
        self.traceback = traceback


class ElixirToolNotFound(ElixirToolError):
    """No Elixir tool of that name is registered."""


class BridgeUnavailable(BridgeError):
    """The bridge cannot be reached (not configured, not running, or the connection broke)."""


class BridgeTimeout(BridgeError, TimeoutError):
    """A bridge call ran out of time (its deadline passed). Also a :class:`TimeoutError`."""


_BY_REASON: Dict[str, Type[BridgeError]] = {
    "session_not_found": SessionNotFound,
    "session_ended": SessionEnded,
    "variable_not_found": VariableNotFound,
    "variable_exists": VariableExists,
    "version_conflict": VersionConflict,
    "invalid_value": InvalidVariable,
    "invalid_type": InvalidVariable,
    "invalid_constraints": InvalidVariable,
    "invalid_argument": InvalidVariable,
    "session_quota_exceeded": QuotaExceeded,
    "variable_quota_exceeded": QuotaExceeded,
    "watch_overflow": WatchOverflow,
    "tool_not_found": ElixirToolNotFound,
}

_BY_CODE: Dict[str, Type[BridgeError]] = {
    "UNAVAILABLE": BridgeUnavailable,
    "DEADLINE_EXCEEDED": BridgeTimeout,
}


def bridge_error(code: str, reason: str, message: str) -> BridgeError:
    """The :class:`BridgeError` subclass for a failed bridge call.

    Chosen by ``reason`` when the node sent a known one, else by ``code``
    (``"UNAVAILABLE"`` → :class:`BridgeUnavailable`, ``"DEADLINE_EXCEEDED"``
    → :class:`BridgeTimeout`), else :class:`BridgeError` itself.
    """
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code) or BridgeError
    if cls is ElixirToolNotFound:
        return ElixirToolNotFound(message, reason, code, error_type=reason)
    return cls(message, reason, code)
