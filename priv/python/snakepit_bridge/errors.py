"""Errors reported back to the caller of a tool."""

from __future__ import annotations

import traceback as _traceback

__all__ = ["ToolFailure", "PYTHON", "VALIDATION"]

#: Category of a failure raised by the tool's own code (or its result encoding).
PYTHON = "python"
#: Category of a failure caused by the request (unknown tool, bad arguments, ...).
VALIDATION = "validation"


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
