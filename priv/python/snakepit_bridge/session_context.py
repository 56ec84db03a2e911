"""Per-call session information available to tools."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Dict, Optional

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
    """

    session_id: str
    worker_id: str
    metadata: Dict[str, str] = field(default_factory=dict)


_current: ContextVar[Optional[SessionContext]] = ContextVar("snakepit_session_context", default=None)


def current_session_context() -> Optional[SessionContext]:
    """Return the :class:`SessionContext` of the running call, or ``None`` outside a call."""
    return _current.get()
