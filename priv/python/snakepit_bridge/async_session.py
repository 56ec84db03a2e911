"""A session's variables, watches and Elixir tools as coroutines: :class:`AsyncSessionContext`.

Inside a tool it is ``self.session_context.aio``; anywhere else
``async with SessionContext.connect(...) as session`` opens one (see
:meth:`SessionContext.connect
<snakepit_bridge.session_context.SessionContext.connect>`)::

    async with SessionContext.connect(address, "job_7", token=token) as session:
        await session.set_variable("temperature", 20.0)
        async for update in session.watch_variables(["temperature"], debounce_ms=100):
            print(update.variable_name, update.old_value, "->", update.value)

This is the one implementation of the session API: the blocking methods of
:class:`~snakepit_bridge.session_context.SessionContext` run these
coroutines on the process's background loop
(:mod:`snakepit_bridge.background`).
"""

from __future__ import annotations

import numbers
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from .environment import bridge_settings
from .errors import BridgeTimeout, VariableExists, VariableNotFound
from .records import ElixirTool
from .watching import AsyncVariableWatch, ErrorCallback, FilterFn, VariableCache

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import AsyncBridge, Bridge, Variable
    from .session_context import SessionContext

__all__ = ["AsyncSessionContext", "SessionConnection", "infer_variable_type"]


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
    anywhere (see :meth:`SessionContext.connect`). Its methods await the
    native client's futures (:class:`~snakepit_bridge.bridge.AsyncBridge`),
    and watches read in a task of the event loop: no thread waits on the
    bridge. The blocking methods of :class:`SessionContext` are a thin layer
    over these.

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
        self._source = context._source
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
        """The :class:`SessionContext` this belongs to (the same methods, blocking)."""
        return self._context

    async def _bridge(self) -> AsyncBridge:
        client = self._context._client
        if client is not None:
            return client.aio
        from .bridge import process_bridge

        return await process_bridge()

    def _session(self) -> str:
        return self._context._session()

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
        bridge = await self._bridge()
        variable = await bridge.register_variable(
            session_id, name, type, initial_value, constraints=constraints, metadata=metadata, source=self._source
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
        session_id = self._session()
        bridge = await self._bridge()
        variable = await bridge.get_variable(session_id, name)
        self.cache.update(variable)
        return variable

    async def get_variables(self, names: Sequence[str]) -> Dict[str, Any]:
        """The values of several variables, in one request: name → value.

        Names that name no variable are left out of the result; from the
        cache when a live watch covers them all.

        Raises:
            SessionRequired: The call belongs to no session.
        """
        asked = list(dict.fromkeys(str(n) for n in names))
        fresh = [self.cache.fresh(name) for name in asked]
        if asked and all(variable is not None for variable in fresh):
            return {name: variable.value for name, variable in zip(asked, fresh) if variable is not None}
        session_id = self._session()
        bridge = await self._bridge()
        found, missing = await bridge.get_variables(session_id, asked)
        for variable in found:
            self.cache.update(variable)
        gone = set(missing)
        present = [n for n in asked if n not in gone]
        if len(present) != len(found):  # pragma: no cover - the node answers in the order asked
            return {variable.name: variable.value for variable in found}
        return {name: variable.value for name, variable in zip(present, found)}

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
        session_id = self._session()
        bridge = await self._bridge()
        try:
            variable = await bridge.set_variable(
                session_id, name, value, expected_version=expected_version, metadata=metadata, source=self._source
            )
        except VariableNotFound:
            if not create or expected_version is not None:
                raise
            try:
                variable = await bridge.register_variable(
                    session_id, name, infer_variable_type(value), value, metadata=metadata, source=self._source
                )
            except VariableExists:  # registered meanwhile by someone else: write it
                variable = await bridge.set_variable(session_id, name, value, metadata=metadata, source=self._source)
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

        Missing variables are not created: the batch fails with :class:`VariableNotFound`.

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
        bridge = await self._bridge()
        updated = await bridge.set_variables(
            session_id, values, expected_versions=expected_versions, metadata=metadata, source=self._source
        )
        for variable in updated.values():
            self.cache.update(variable)
        return updated

    async def list_variables(self, pattern: str = "*") -> List[Variable]:
        """The session's variables whose name matches ``pattern`` (``*``: any run of characters), by name.

        Raises:
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        bridge = await self._bridge()
        variables = await bridge.list_variables(session_id, pattern)
        for variable in variables:
            self.cache.update(variable)
        return variables

    async def delete_variable(self, name: str) -> None:
        """Delete a variable; its watchers get a ``"deleted"`` update.

        Raises:
            VariableNotFound: No such variable.
            SessionRequired: The call belongs to no session.
        """
        session_id = self._session()
        bridge = await self._bridge()
        await bridge.delete_variable(session_id, name, source=self._source)
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
        session_id = self._session()
        watch = AsyncVariableWatch(
            self._bridge,
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
        """Run an Elixir tool (registered with ``Snakepit.ElixirTools``) with keyword arguments; its result.

        The call belongs to this call's session (if any) and carries its
        metadata; when this call has a deadline, the Elixir tool must finish
        within the time remaining.

        Raises:
            ElixirToolError: The Elixir function failed (its message and ``error_type``).
            ElixirToolNotFound: No such tool.
            BridgeTimeout: The time ran out.
        """
        context = self._context
        timeout = context.time_remaining()
        if timeout is not None and timeout <= 0.0:
            raise BridgeTimeout(
                f"no time left to call Elixir tool {tool_name!r}: the call's deadline passed",
                "deadline_exceeded",
                "DEADLINE_EXCEEDED",
            )
        bridge = await self._bridge()
        return await bridge.call_elixir_tool(
            tool_name, kwargs, session_id=context.session_id, metadata=context.metadata, timeout=timeout
        )

    async def list_elixir_tools(self) -> List[ElixirTool]:
        """The Elixir tools Python may call (see :meth:`AsyncBridge.list_elixir_tools`)."""
        bridge = await self._bridge()
        return await bridge.list_elixir_tools()


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

    async def _open_bridge(self) -> Bridge:
        from .bridge import DEFAULT_TIMEOUT, AsyncBridge, Bridge, process_bridge

        from_env = self._address is None
        source = self._source or ("python" if from_env else "client")
        if from_env and self._token is None and self._timeout is None and source == "python":
            return Bridge.over(await process_bridge())
        address, token = bridge_settings(self._address, self._token)
        aio = await AsyncBridge.connect(address, token, timeout=self._timeout or DEFAULT_TIMEOUT, source=source)
        return Bridge.over(aio)

    async def __aenter__(self) -> AsyncSessionContext:
        bridge = await self._open_bridge()
        info = await bridge.aio.create_session(self._session_id, ttl_seconds=self._ttl_seconds, metadata=self._metadata)
        from .session_context import SessionContext

        context = SessionContext(session_id=info.session_id, worker_id="", _client=bridge, _source=bridge.source)
        self._session = context.aio
        return self._session

    async def __aexit__(self, *exc_info: Any) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.close_watches()
        if self._delete_on_exit:
            bridge = await session._bridge()
            await bridge.delete_session(session.session_id)
