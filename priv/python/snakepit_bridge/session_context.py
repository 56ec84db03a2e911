"""Per-call session information available to tools."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .cancellation import CallHandle

__all__ = ["SessionContext", "current_session_context"]


@dataclass
class SessionContext:
    """Describes the call a tool is currently serving.

    A fresh instance is created for every call and made visible to the tool
    through :attr:`BaseAdapter.session_context` (backed by a context variable,
    so concurrent calls on one adapter each see their own).

    Attributes:
        session_id: Session the call belongs to (``""`` when sessionless).
        worker_id: Id of the worker process serving the call.
        metadata: Request metadata sent by the caller.
        deadline: When the call will be cancelled because its caller's
            timeout runs out, as a :func:`time.monotonic` value; ``None`` when
            the caller set no timeout. Compare with ``time.monotonic()``, or
            use :meth:`time_remaining`.
    """

    session_id: str
    worker_id: str
    metadata: Dict[str, str] = field(default_factory=dict)
    deadline: Optional[float] = None
    _handle: Optional["CallHandle"] = field(default=None, repr=False, compare=False)

    def time_remaining(self) -> Optional[float]:
        """Seconds left before :attr:`deadline` (``0.0`` once it passed), or ``None`` without one.

        Tools that can split their work use it to stop, or to return a partial
        result, before the worker cancels them.
        """
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def cancelled(self) -> bool:
        """Whether the call was cancelled (its caller went away or its deadline passed).

        The worker also raises :class:`~snakepit_bridge.errors.ToolCancelled`
        in the tool; checking this flag helps code that cannot be interrupted,
        such as a loop of long calls into C, stop between two of them.
        """
        return self._handle is not None and self._handle.cancelled


_current: ContextVar[Optional[SessionContext]] = ContextVar("snakepit_session_context", default=None)


def current_session_context() -> Optional[SessionContext]:
    """Return the :class:`SessionContext` of the running call, or ``None`` outside a call."""
    return _current.get()
