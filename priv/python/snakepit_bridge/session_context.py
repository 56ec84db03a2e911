"""Per-call session information available to tools, and the session's variables.

Tool code reaches its session through ``self.session_context``: the call's
ids, metadata and deadline, and the session's variables and the Elixir tools,
stored by the node and reached through the bridge (see
:mod:`snakepit_bridge.bridge`)::

    @tool()
    def step(self):
        ctx = self.session_context
        rate = ctx.get_variable("learning_rate")
        ctx.set_variable("steps", ctx.get_variable("steps") + 1)

Async tools use the same methods as coroutines through :attr:`SessionContext.aio`.
"""

from __future__ import annotations

import asyncio
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from .errors import BridgeTimeout, SessionRequired

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import Bridge, Variable
    from .cancellation import CallHandle

__all__ = ["SessionContext", "AsyncSessionContext", "current_session_context"]

#: Who the writes of tool code are recorded as.
_SOURCE = "python"


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

    # -- session variables and Elixir tools ------------------------------------

    @property
    def aio(self) -> "AsyncSessionContext":
        """The variable and Elixir tool methods of this context as coroutines, for async tools.

        ``await self.session_context.aio.get_variable("x")`` does what
        ``get_variable("x")`` does without blocking the event loop.
        """
        return AsyncSessionContext(self)

    def _bridge(self) -> "Bridge":
        from .bridge import Bridge

        return Bridge.from_environment()

    def _session(self) -> str:
        if not self.session_id:
            raise SessionRequired(
                "this call belongs to no session, so it has no session variables "
                "(run the tool in a session, e.g. with Snakepit.execute_in_session)",
                "session_required",
            )
        return self.session_id

    def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        *,
        constraints: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> "Variable":
        """Register a variable in the session (version 1).

        Args:
            name: Name unique in the session.
            type: ``"float"``, ``"integer"``, ``"string"``, ``"boolean"``,
                ``"choice"``, ``"module"``, ``"embedding"``, ``"tensor"`` or ``"json"``.
            initial_value: The value; must satisfy the type and constraints.
            constraints: E.g. ``{"min": 0, "max": 1}`` or ``{"choices": [...]}``.
            metadata: Kept with the variable.

        Raises:
            VariableExists: The name is taken.
            InvalidVariable: Bad type, value or constraints.
            QuotaExceeded: The session holds its maximum number of variables.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        return self._bridge().register_variable(
            session_id, name, type, initial_value, constraints=constraints, metadata=metadata, source=_SOURCE
        )

    def get_variable(self, name: str) -> Any:
        """The current value of a variable (by name or id).

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        return self.get_variable_info(name).value

    def get_variable_info(self, name: str) -> "Variable":
        """A variable with its type, constraints, version and times (by name or id).

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        return self._bridge().get_variable(session_id, name)

    def get_variables(self, names: Sequence[str]) -> Dict[str, Any]:
        """The values of several variables, in one request: name → value.

        Names that name no variable are left out of the result.

        Raises:
            SessionRequired: The call belongs to no session.
        """
        asked = list(dict.fromkeys(str(n) for n in names))
        session_id = self._session()
        found, missing = self._bridge().get_variables(session_id, asked)
        gone = set(missing)
        present = [n for n in asked if n not in gone]
        if len(present) != len(found):  # pragma: no cover - the node answers in the order asked
            return {variable.name: variable.value for variable in found}
        return {name: variable.value for name, variable in zip(present, found)}

    def set_variable(
        self,
        name: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> "Variable":
        """Write a variable; returns it after the write (with its new ``version``).

        Args:
            expected_version: Write only if the variable is still at this version.
            metadata: Recorded with the write and sent to watchers.

        Raises:
            VersionConflict: The variable is no longer at ``expected_version``.
            InvalidVariable: The value breaks the type or constraints.
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        return self._bridge().set_variable(
            session_id, name, value, expected_version=expected_version, metadata=metadata, source=_SOURCE
        )

    def update_variables(
        self,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, "Variable"]:
        """Write several variables atomically: all writes happen or none does.

        Args:
            values: Name → new value.
            expected_versions: Name → version it must still be at.
            metadata: Recorded with every write.

        Returns:
            Name → the variable after the writes.

        Raises:
            VersionConflict, InvalidVariable, VariableNotFound: Nothing was written.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        return self._bridge().set_variables(
            session_id, values, expected_versions=expected_versions, metadata=metadata, source=_SOURCE
        )

    def list_variables(self, pattern: str = "*") -> List["Variable"]:
        """The session's variables whose name matches ``pattern`` (``*``: any run of characters), by name.

        Raises:
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        return self._bridge().list_variables(session_id, pattern)

    def delete_variable(self, name: str) -> None:
        """Delete a variable; its watchers get a ``"deleted"`` update.

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        self._bridge().delete_variable(session_id, name, source=_SOURCE)

    def call_elixir_tool(self, tool_name: str, /, **kwargs: Any) -> Any:
        """Run an Elixir tool (registered with ``Snakepit.ElixirTools``) with keyword arguments; its result.

        The call belongs to this call's session (if any) and carries its
        metadata; when this call has a deadline, the Elixir tool must finish
        within the time remaining.

        Raises:
            ElixirToolError: The Elixir function failed (its message and ``error_type``).
            ElixirToolNotFound: No such tool.
            BridgeTimeout: The time ran out.
        """
        timeout = self.time_remaining()
        if timeout is not None and timeout <= 0.0:
            raise BridgeTimeout(
                f"no time left to call Elixir tool {tool_name!r}: the call's deadline passed",
                "deadline_exceeded",
                "DEADLINE_EXCEEDED",
            )
        return self._bridge().call_elixir_tool(
            tool_name, kwargs, session_id=self.session_id, metadata=self.metadata, timeout=timeout
        )

    def list_elixir_tools(self) -> List[Dict[str, Any]]:
        """The Elixir tools Python may call (see :meth:`Bridge.list_elixir_tools`)."""
        return self._bridge().list_elixir_tools()


class AsyncSessionContext:
    """The session methods of a :class:`SessionContext` as coroutines (``session_context.aio``).

    Each runs the blocking method in a thread (:func:`asyncio.to_thread`), so
    the event loop keeps running while the bridge answers.
    """

    def __init__(self, context: SessionContext) -> None:
        self._context = context

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        *,
        constraints: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> "Variable":
        """See :meth:`SessionContext.register_variable`."""
        return await asyncio.to_thread(
            self._context.register_variable, name, type, initial_value, constraints=constraints, metadata=metadata
        )

    async def get_variable(self, name: str) -> Any:
        """See :meth:`SessionContext.get_variable`."""
        return await asyncio.to_thread(self._context.get_variable, name)

    async def get_variable_info(self, name: str) -> "Variable":
        """See :meth:`SessionContext.get_variable_info`."""
        return await asyncio.to_thread(self._context.get_variable_info, name)

    async def get_variables(self, names: Sequence[str]) -> Dict[str, Any]:
        """See :meth:`SessionContext.get_variables`."""
        return await asyncio.to_thread(self._context.get_variables, names)

    async def set_variable(
        self,
        name: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> "Variable":
        """See :meth:`SessionContext.set_variable`."""
        return await asyncio.to_thread(
            self._context.set_variable, name, value, expected_version=expected_version, metadata=metadata
        )

    async def update_variables(
        self,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, "Variable"]:
        """See :meth:`SessionContext.update_variables`."""
        return await asyncio.to_thread(
            self._context.update_variables, values, expected_versions=expected_versions, metadata=metadata
        )

    async def list_variables(self, pattern: str = "*") -> List["Variable"]:
        """See :meth:`SessionContext.list_variables`."""
        return await asyncio.to_thread(self._context.list_variables, pattern)

    async def delete_variable(self, name: str) -> None:
        """See :meth:`SessionContext.delete_variable`."""
        await asyncio.to_thread(self._context.delete_variable, name)

    async def call_elixir_tool(self, tool_name: str, /, **kwargs: Any) -> Any:
        """See :meth:`SessionContext.call_elixir_tool`."""
        return await asyncio.to_thread(lambda: self._context.call_elixir_tool(tool_name, **kwargs))

    async def list_elixir_tools(self) -> List[Dict[str, Any]]:
        """See :meth:`SessionContext.list_elixir_tools`."""
        return await asyncio.to_thread(self._context.list_elixir_tools)


_current: ContextVar[Optional[SessionContext]] = ContextVar("snakepit_session_context", default=None)


def current_session_context() -> Optional[SessionContext]:
    """Return the :class:`SessionContext` of the running call, or ``None`` outside a call."""
    return _current.get()
