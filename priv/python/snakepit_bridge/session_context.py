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

Async tools use the same methods as coroutines, and watch variables, through
:attr:`SessionContext.aio` (an :class:`~snakepit_bridge.async_session.AsyncSessionContext`,
the one implementation: the blocking methods here run its coroutines on the
process's background loop). Programs outside a tool open the same async API
with :meth:`SessionContext.connect`::

    async with SessionContext.connect(address, "job_7", token=token) as session:
        await session.set_variable("temperature", 20.0)
        async for update in session.watch_variables(["temperature"], debounce_ms=100):
            print(update.variable_name, update.old_value, "->", update.value)
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from . import background
from .async_session import AsyncSessionContext, SessionConnection, infer_variable_type
from .errors import SessionRequired
from .records import ElixirTool

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import Bridge, Variable
    from .cancellation import CallHandle

__all__ = [
    "SessionContext",
    "AsyncSessionContext",
    "SessionConnection",
    "infer_variable_type",
    "current_session_context",
]

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
        tool: Name of the tool (or universal-call operation) being served;
            ``""`` outside a call.
    """

    session_id: str
    worker_id: str
    metadata: Dict[str, str] = field(default_factory=dict)
    deadline: Optional[float] = None
    tool: str = ""
    _handle: Optional[CallHandle] = field(default=None, repr=False, compare=False)
    #: The bridge this context uses; ``None``: the process's (:meth:`Bridge.from_environment`).
    _client: Optional[Bridge] = field(default=None, repr=False, compare=False)
    #: Who this context's writes are recorded as.
    _source: str = field(default=_SOURCE, repr=False, compare=False)
    _aio: Optional[AsyncSessionContext] = field(default=None, init=False, repr=False, compare=False)

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
    def aio(self) -> AsyncSessionContext:
        """The session's async API, for async tools: variables, watches and Elixir tools as coroutines.

        ``await self.session_context.aio.get_variable("x")`` does what
        ``get_variable("x")`` does without blocking the event loop, and
        ``self.session_context.aio.watch_variables([...])`` watches variables
        (see :class:`AsyncSessionContext`). The same object is returned every
        time, so its variable cache lives as long as this context.
        """
        if self._aio is None:
            self._aio = AsyncSessionContext(self)
        return self._aio

    @classmethod
    def connect(
        cls,
        address: Optional[str] = None,
        session_id: str = "",
        token: Optional[str] = None,
        *,
        ttl_seconds: int = 0,
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        source: Optional[str] = None,
        delete_on_exit: bool = False,
    ) -> SessionConnection:
        """Connect to a node's bridge and open a session: ``async with`` it to get an :class:`AsyncSessionContext`.

        ::

            async with SessionContext.connect("127.0.0.1:40123", "job_7", token=token) as session:
                await session.set_variable("temperature", 20.0)
                async for update in session.watch_variables(["temperature"]):
                    ...

        Inside a worker (or any process with ``SNAKEPIT_BRIDGE_ADDRESS`` and
        ``SNAKEPIT_TOKEN`` set) the session id is enough:
        ``SessionContext.connect(session_id="job_7")``.

        The session is created if it does not exist (``CreateSession`` is
        idempotent and renews an existing one). On exit, the session's
        watches opened through this object are closed; the session itself
        stays (it is shared with Elixir) unless ``delete_on_exit``.

        Args:
            address: ``host:port`` of the bridge; ``None``: ``$SNAKEPIT_BRIDGE_ADDRESS``.
            session_id: The session; ``""`` lets the node choose an id
                (read it from :attr:`AsyncSessionContext.session_id`).
            token: The node's token; ``None``: ``$SNAKEPIT_TOKEN``.
            ttl_seconds: Time to live of a new session (0: the node's default).
            metadata: Kept with a new session.
            timeout: Seconds a call may take (default 30).
            source: Who the writes are recorded as: by default ``"python"``
                when the address comes from the environment (worker code), else
                ``"client"``.
            delete_on_exit: Delete the session when the ``async with`` block ends.

        Raises (on entering):
            BridgeUnavailable: Nothing answers at the address, or the address
                or token is neither given nor in the environment
                (``reason`` ``"not_configured"``).
            QuotaExceeded: The node holds its maximum number of sessions.
        """
        return SessionConnection(
            address,
            session_id,
            token,
            ttl_seconds=ttl_seconds,
            metadata=metadata,
            timeout=timeout,
            source=source,
            delete_on_exit=delete_on_exit,
        )

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
    ) -> Variable:
        """Register a variable in the session (version 1); see :meth:`AsyncSessionContext.register_variable`."""
        return background.run(
            lambda: self.aio.register_variable(name, type, initial_value, constraints=constraints, metadata=metadata)
        )

    def get_variable(self, name: str) -> Any:
        """The current value of a variable (by name or id); see :meth:`AsyncSessionContext.get_variable`."""
        return background.run(lambda: self.aio.get_variable(name))

    def get_variable_info(self, name: str) -> Variable:
        """A variable with its type, constraints and version; see :meth:`AsyncSessionContext.get_variable_info`."""
        return background.run(lambda: self.aio.get_variable_info(name))

    def get_variables(self, names: Sequence[str]) -> Dict[str, Any]:
        """The values of several variables, name → value; see :meth:`AsyncSessionContext.get_variables`."""
        return background.run(lambda: self.aio.get_variables(names))

    def set_variable(
        self,
        name: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Variable:
        """Write an existing variable; returns it after the write (with its new ``version``).

        A missing variable is an error here (:class:`VariableNotFound`); the
        async :meth:`AsyncSessionContext.set_variable` (``.aio``) registers it
        instead. Otherwise as there.
        """
        return background.run(
            lambda: self.aio.set_variable(
                name, value, expected_version=expected_version, metadata=metadata, create=False
            )
        )

    def update_variables(
        self,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Variable]:
        """Write several variables atomically; see :meth:`AsyncSessionContext.update_variables`."""
        return background.run(
            lambda: self.aio.update_variables(values, expected_versions=expected_versions, metadata=metadata)
        )

    def list_variables(self, pattern: str = "*") -> List[Variable]:
        """The session's variables matching ``pattern``; see :meth:`AsyncSessionContext.list_variables`."""
        return background.run(lambda: self.aio.list_variables(pattern))

    def delete_variable(self, name: str) -> None:
        """Delete a variable; see :meth:`AsyncSessionContext.delete_variable`."""
        background.run(lambda: self.aio.delete_variable(name))

    def call_elixir_tool(self, tool_name: str, /, **kwargs: Any) -> Any:
        """Run an Elixir tool with keyword arguments; see :meth:`AsyncSessionContext.call_elixir_tool`."""
        return background.run(lambda: self.aio.call_elixir_tool(tool_name, **kwargs))

    def list_elixir_tools(self) -> List[ElixirTool]:
        """The Elixir tools Python may call; see :meth:`AsyncSessionContext.list_elixir_tools`."""
        return background.run(lambda: self.aio.list_elixir_tools())


_current: ContextVar[Optional[SessionContext]] = ContextVar("snakepit_session_context", default=None)


def current_session_context() -> Optional[SessionContext]:
    """Return the :class:`SessionContext` of the running call, or ``None`` outside a call."""
    return _current.get()
