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
:attr:`SessionContext.aio` (an :class:`AsyncSessionContext`). Programs outside
a tool open the same async API with :meth:`SessionContext.connect`::

    async with SessionContext.connect(address, "job_7", token=token) as session:
        await session.set_variable("temperature", 20.0)
        async for update in session.watch_variables(["temperature"], debounce_ms=100):
            print(update.variable_name, update.old_value, "->", update.value)
"""

from __future__ import annotations

import asyncio
import numbers
import os
import time
import weakref
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from .errors import BridgeTimeout, BridgeUnavailable, SessionRequired, VariableExists, VariableNotFound
from .records import ElixirTool
from .watching import AsyncVariableWatch, ErrorCallback, FilterFn, VariableCache

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
    """

    session_id: str
    worker_id: str
    metadata: Dict[str, str] = field(default_factory=dict)
    deadline: Optional[float] = None
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

    def _bridge(self) -> Bridge:
        if self._client is not None:
            return self._client
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
    ) -> Variable:
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
            session_id, name, type, initial_value, constraints=constraints, metadata=metadata, source=self._source
        )

    def get_variable(self, name: str) -> Any:
        """The current value of a variable (by name or id).

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        return self.get_variable_info(name).value

    def get_variable_info(self, name: str) -> Variable:
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
    ) -> Variable:
        """Write a variable; returns it after the write (with its new ``version``).

        A missing variable is an error here; the async
        :meth:`AsyncSessionContext.set_variable` (``.aio``) registers it instead.

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
            session_id, name, value, expected_version=expected_version, metadata=metadata, source=self._source
        )

    def update_variables(
        self,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Variable]:
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
            session_id, values, expected_versions=expected_versions, metadata=metadata, source=self._source
        )

    def list_variables(self, pattern: str = "*") -> List[Variable]:
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
        self._bridge().delete_variable(session_id, name, source=self._source)

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

    def list_elixir_tools(self) -> List[ElixirTool]:
        """The Elixir tools Python may call (see :meth:`Bridge.list_elixir_tools`)."""
        return self._bridge().list_elixir_tools()


def infer_variable_type(value: Any) -> str:
    """The variable type a value is registered with when :meth:`AsyncSessionContext.set_variable` creates it.

    ``bool`` → ``"boolean"``, integers → ``"integer"``, other real numbers →
    ``"float"``, ``str`` → ``"string"``, anything else → ``"json"``. Register
    the variable yourself for another type or for constraints (an integer
    variable refuses ``0.5`` later: write ``20.0``, not ``20``, for a float).
    """
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "string"
    return "json"


class AsyncSessionContext:
    """A session's variables, watches and Elixir tools, as coroutines.

    Two ways to get one: ``self.session_context.aio`` inside a tool (the
    call's session), or ``async with SessionContext.connect(...) as session``
    anywhere (see :meth:`SessionContext.connect`). The blocking bridge calls
    run in threads (:func:`asyncio.to_thread`) and watches read in a thread
    of their own, so the event loop never waits on the bridge.

    Every variable read, write and watch update passes through :attr:`cache`;
    while a watch of this object is connected and covers a variable,
    :meth:`get_variable` answers from the cache without asking the node (the
    watch keeps it fresh; writes of this object are seen at once, others'
    as soon as the node pushes them).

    Attributes:
        cache: The :class:`~snakepit_bridge.watching.VariableCache` of this object.
    """

    def __init__(self, context: SessionContext) -> None:
        self._context = context
        self.cache = VariableCache()
        self._watches: weakref.WeakSet[AsyncVariableWatch] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<AsyncSessionContext session_id={self._context.session_id!r}>"

    @property
    def session_id(self) -> str:
        """The session's id."""
        return self._context.session_id

    @property
    def context(self) -> SessionContext:
        """The synchronous :class:`SessionContext` this wraps (the same methods, blocking)."""
        return self._context

    # -- variables -----------------------------------------------------------

    async def register_variable(
        self,
        name: str,
        type: str,
        initial_value: Any,
        *,
        constraints: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Variable:
        """Register a variable (version 1); see :meth:`SessionContext.register_variable`."""
        variable = await asyncio.to_thread(
            self._context.register_variable, name, type, initial_value, constraints=constraints, metadata=metadata
        )
        self.cache.update(variable)
        return variable

    async def get_variable(self, name: str) -> Any:
        """The current value of a variable (by name or id); from the cache while a live watch covers it.

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: No session.
        """
        return (await self.get_variable_info(name)).value

    async def get_variable_info(self, name: str) -> Variable:
        """A variable with its type, constraints, version and times; from the cache while a live watch covers it.

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: No session.
        """
        fresh = self.cache.fresh(name)
        if fresh is not None:
            return fresh
        variable = await asyncio.to_thread(self._context.get_variable_info, name)
        self.cache.update(variable)
        return variable

    async def get_variables(self, names: Sequence[str]) -> Dict[str, Any]:
        """The values of several variables, name → value (missing ones left out).

        See :meth:`SessionContext.get_variables`.
        """
        asked = list(dict.fromkeys(str(n) for n in names))
        fresh = [self.cache.fresh(name) for name in asked]
        if asked and all(variable is not None for variable in fresh):
            return {name: variable.value for name, variable in zip(asked, fresh) if variable is not None}
        return await asyncio.to_thread(self._context.get_variables, asked)

    async def set_variable(
        self,
        name: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        create: bool = True,
    ) -> Variable:
        """Write a variable, creating it if it does not exist; returns it after the write.

        A variable that does not exist is registered with the value and a
        type inferred from it (:func:`infer_variable_type`; ``metadata`` is
        kept with it), unless ``create=False`` or ``expected_version`` is
        given, which raise :class:`VariableNotFound` instead. (The blocking
        :meth:`SessionContext.set_variable` never creates.)

        Args:
            expected_version: Write only if the variable is still at this version.
            metadata: Recorded with the write and sent to watchers.
            create: Register a missing variable instead of failing.

        Raises:
            VersionConflict: The variable is no longer at ``expected_version``.
            InvalidVariable: The value breaks the type or constraints.
            VariableNotFound: No such variable (and not created).
            SessionRequired: No session.
        """
        try:
            variable = await asyncio.to_thread(
                self._context.set_variable, name, value, expected_version=expected_version, metadata=metadata
            )
        except VariableNotFound:
            if not create or expected_version is not None:
                raise
            try:
                variable = await asyncio.to_thread(
                    self._context.register_variable, name, infer_variable_type(value), value, metadata=metadata
                )
            except VariableExists:  # registered meanwhile by someone else: write it
                variable = await asyncio.to_thread(self._context.set_variable, name, value, metadata=metadata)
        self.cache.update(variable)
        return variable

    async def update_variables(
        self,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Variable]:
        """Write several existing variables atomically: all writes happen or none does.

        See :meth:`SessionContext.update_variables` (missing variables are
        not created: the batch fails with :class:`VariableNotFound`).
        """
        updated = await asyncio.to_thread(
            self._context.update_variables, values, expected_versions=expected_versions, metadata=metadata
        )
        for variable in updated.values():
            self.cache.update(variable)
        return updated

    async def list_variables(self, pattern: str = "*") -> List[Variable]:
        """The variables whose name matches ``pattern``, by name; see :meth:`SessionContext.list_variables`."""
        variables = await asyncio.to_thread(self._context.list_variables, pattern)
        for variable in variables:
            self.cache.update(variable)
        return variables

    async def delete_variable(self, name: str) -> None:
        """Delete a variable; its watchers get a ``"deleted"`` update. See :meth:`SessionContext.delete_variable`."""
        await asyncio.to_thread(self._context.delete_variable, name)
        known = self.cache.get(name)
        if known is not None:
            self.cache.discard(known.name, known.id)

    # -- watches -------------------------------------------------------------

    def watch_variables(
        self,
        names: Sequence[str],
        include_initial: bool = True,
        filter_fn: Optional[FilterFn] = None,
        debounce_ms: float = 0,
        on_error: Optional[ErrorCallback] = None,
        reconnect: bool = True,
        reconnect_delay_ms: float = 1000,
        *,
        heartbeat_ms: int = 0,
        max_buffered: int = 0,
    ) -> AsyncVariableWatch:
        """Watch variables: an async iterator of :class:`~snakepit_bridge.bridge.VariableUpdate`.

        ::

            async for update in session.watch_variables(["temperature", "pressure"], debounce_ms=100):
                print(update.variable_name, update.old_value, "->", update.value, update.version)

        The node's stream opens on the first iteration; ``break``, task
        cancellation, :meth:`AsyncVariableWatch.aclose` or leaving
        ``async with session.watch_variables(...) as updates:`` closes it.
        Heartbeats are consumed silently. The delivery, debounce and
        reconnection rules are in :mod:`snakepit_bridge.watching`.

        Args:
            names: Variable names (or ids), at least one; all must exist.
            include_initial: Deliver each variable's current value first
                (``update_type`` ``"initial_value"``, :attr:`VariableUpdate.is_initial`).
            filter_fn: ``filter_fn(name, old_value, new_value) -> bool``;
                updates it refuses are not delivered. If it raises, the
                error goes to ``on_error`` and the update is delivered.
            debounce_ms: Per variable, at most one update per this many
                milliseconds; within a window the latest value wins and is
                delivered when the window closes (trailing edge).
            on_error: Called (in the event loop) with each non-fatal error
                (a broken stream before reconnecting, a watch overflow before
                resyncing, a failing ``filter_fn``) and with the fatal one
                before it is raised. A coroutine function is scheduled.
            reconnect: Reconnect when the stream breaks (exponential backoff
                from ``reconnect_delay_ms``, doubled per failed attempt, capped at
                60 s, at most 10 attempts in a row) and resync without
                duplicates; ``False`` raises the error instead.
            reconnect_delay_ms: The first reconnection delay.
            heartbeat_ms: Heartbeat interval asked of the node (0: its
                default, 5000); a stream silent for three intervals is
                presumed dead and reconnected.
            max_buffered: Updates the node may buffer for this watch before
                it overflows (0: its default, 1024).

        Raises:
            ValueError: ``names`` is empty (at once).
            SessionRequired: No session (at once).
            VariableNotFound, SessionNotFound: From the iteration, when a
                variable or the session does not exist.
            SessionEnded: From the iteration, when the session was deleted or
                expired (after the updates that came before).
        """
        session_id = self._context._session()
        watch = AsyncVariableWatch(
            self._context._bridge,
            session_id,
            names,
            include_initial=include_initial,
            filter_fn=filter_fn,
            debounce_ms=debounce_ms,
            on_error=on_error,
            reconnect=reconnect,
            reconnect_delay_ms=reconnect_delay_ms,
            heartbeat_ms=heartbeat_ms,
            max_buffered=max_buffered,
            cache=self.cache,
        )
        self._watches.add(watch)
        return watch

    def watch_variable(self, name: str, **kwargs: Any) -> AsyncVariableWatch:
        """Watch one variable: ``watch_variables([name], **kwargs)``."""
        return self.watch_variables([name], **kwargs)

    def close_watches(self) -> None:
        """Close every watch opened through this object that is still open."""
        for watch in list(self._watches):
            watch.close()

    # -- Elixir tools --------------------------------------------------------

    async def call_elixir_tool(self, tool_name: str, /, **kwargs: Any) -> Any:
        """See :meth:`SessionContext.call_elixir_tool`."""
        return await asyncio.to_thread(lambda: self._context.call_elixir_tool(tool_name, **kwargs))

    async def list_elixir_tools(self) -> List[ElixirTool]:
        """See :meth:`SessionContext.list_elixir_tools`."""
        return await asyncio.to_thread(self._context.list_elixir_tools)


class SessionConnection:
    """What :meth:`SessionContext.connect` returns: ``async with`` it for an :class:`AsyncSessionContext`."""

    def __init__(
        self,
        address: Optional[str],
        session_id: str,
        token: Optional[str],
        *,
        ttl_seconds: int = 0,
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
        source: Optional[str] = None,
        delete_on_exit: bool = False,
    ) -> None:
        self._address = address
        self._session_id = session_id
        self._token = token
        self._ttl_seconds = ttl_seconds
        self._metadata = metadata
        self._timeout = timeout
        self._source = source
        self._delete_on_exit = delete_on_exit
        self._session: Optional[AsyncSessionContext] = None

    def _open_bridge(self) -> Bridge:
        from .bridge import ADDRESS_ENV_VAR, DEFAULT_TIMEOUT, TOKEN_ENV_VAR, Bridge, environment_token

        from_env = self._address is None
        source = self._source or ("python" if from_env else "client")
        if from_env and self._token is None and self._timeout is None and source == "python":
            return Bridge.from_environment()
        address = self._address if self._address is not None else os.environ.get(ADDRESS_ENV_VAR, "")
        token = self._token if self._token is not None else environment_token()
        if not address or not token:
            missing = [n for n, v in ((ADDRESS_ENV_VAR, address), (TOKEN_ENV_VAR, token)) if not v]
            raise BridgeUnavailable(
                f"no bridge to connect to: pass address and token, or set {' and '.join(missing)}",
                "not_configured",
            )
        return Bridge(address, token, timeout=self._timeout or DEFAULT_TIMEOUT, source=source)

    def _open(self) -> AsyncSessionContext:
        bridge = self._open_bridge()
        info = bridge.create_session(self._session_id, ttl_seconds=self._ttl_seconds, metadata=self._metadata)
        context = SessionContext(session_id=info.session_id, worker_id="", _client=bridge, _source=bridge.source)
        return context.aio

    async def __aenter__(self) -> AsyncSessionContext:
        self._session = await asyncio.to_thread(self._open)
        return self._session

    async def __aexit__(self, *exc_info: Any) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.close_watches()
        if self._delete_on_exit:
            bridge = session.context._bridge()
            await asyncio.to_thread(bridge.delete_session, session.session_id)


_current: ContextVar[Optional[SessionContext]] = ContextVar("snakepit_session_context", default=None)


def current_session_context() -> Optional[SessionContext]:
    """Return the :class:`SessionContext` of the running call, or ``None`` outside a call."""
    return _current.get()
