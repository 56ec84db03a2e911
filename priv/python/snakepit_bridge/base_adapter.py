"""Base class for adapters: a set of ``@tool`` methods served by a worker."""

from __future__ import annotations

from typing import Dict, Optional

from .session_context import SessionContext, current_session_context
from .stream_chunk import StreamChunk
from .tools import ToolInfo, build_tool_info, get_tool_spec, tool

__all__ = ["BaseAdapter", "tool", "StreamChunk"]


class BaseAdapter:
    """Base class for Snakepit adapters.

    Subclasses define tools as methods decorated with :func:`tool`. Tools may
    be plain functions, coroutine functions, generators or async generators;
    generators (sync or async) are streamed chunk by chunk.

    Optional hook: an adapter may define
    ``execute_tool(self, tool_name, arguments, context)`` (sync or async). The
    dispatcher calls it for tool names that match no ``@tool`` method, with the
    decoded keyword arguments (``dict``) and the call's :class:`SessionContext`.

    ``BaseAdapter`` keeps no required instance state, so subclasses that forget
    to call ``super().__init__()`` still work.
    """

    def __init__(self) -> None:
        """Initialise the adapter (nothing required; kept for ``super()`` chains)."""

    @property
    def session_context(self) -> Optional[SessionContext]:
        """The :class:`SessionContext` of the call being served, or ``None`` outside a call."""
        return current_session_context()

    def get_tools(self) -> Dict[str, ToolInfo]:
        """Discover the ``@tool`` methods of this adapter, bound to it.

        Methods are found along the class MRO without evaluating properties; a
        subclass overriding a method without ``@tool`` hides the base tool.

        Returns:
            Tool name → :class:`ToolInfo`.

        Raises:
            ValueError: Two methods declare the same tool name.
        """
        specs = {}
        for cls in reversed(type(self).__mro__):
            for attr_name, value in vars(cls).items():
                spec = get_tool_spec(value)
                if spec is not None:
                    specs[attr_name] = spec
                else:
                    specs.pop(attr_name, None)
        tools: Dict[str, ToolInfo] = {}
        for attr_name, spec in specs.items():
            info = build_tool_info(attr_name, spec, getattr(self, attr_name))
            if info.name in tools:
                raise ValueError(f"duplicate tool name {info.name!r} in {type(self).__qualname__}")
            tools[info.name] = info
        return tools
