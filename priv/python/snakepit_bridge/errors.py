"""Errors reported back to the caller of a tool."""

from __future__ import annotations

import traceback as _traceback

__all__ = ["ToolFailure", "ToolCancelled", "PYTHON", "VALIDATION", "CANCELLED_BY_CALLER", "DEADLINE_EXCEEDED"]

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
