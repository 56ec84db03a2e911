"""Client of the node's bridge: sessions, session variables, variable watches and Elixir tools.

Every Snakepit node runs one bridge server (in the Elixir NIF) that Python calls
back into. Session state has one owner, the node's session store, so a change
made here is seen by Elixir at once, and the other way round.

Inside a worker, tools use the bridge through their session context
(``self.session_context.get_variable("x")``, see
:class:`~snakepit_bridge.session_context.SessionContext`), which uses the
process's shared :class:`Bridge` (:meth:`Bridge.from_environment`). Programs
outside the pool build their own::

    bridge = Bridge("127.0.0.1:40123", token)
    bridge.create_session("s1")
    bridge.register_variable("s1", "temperature", "float", 0.7, constraints={"min": 0, "max": 2})
    bridge.set_variable("s1", "temperature", 0.9)
    with bridge.watch_variables("s1", ["temperature"]) as watch:
        for update in watch:
            print(update.name, update.old_value, "->", update.value)

Values travel as JSON: anything :func:`json.dumps` accepts, plus sets,
dataclasses and objects with ``tolist()`` (numpy). :class:`AsyncBridge` is
the client, its methods coroutines awaiting the native extension's futures;
:class:`Bridge` is the blocking layer over it (``bridge.aio`` is the async
one). Failures raise :class:`~snakepit_bridge.errors.BridgeError`
subclasses.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from . import background
from .environment import bridge_settings
from .errors import (
    ElixirToolError,
    InvalidVariable,
    bridge_error,
)
from .records import (
    ElixirTool,
    VersionRecord,
)
from .variables import (
    SessionInfo,
    Variable,
    VariableUpdate,
    VariableUpdateStream,
    VariableWatch,
    _decode,
    _encode,
    _str_map,
    _tool_parameter,
)

__all__ = [
    "AsyncBridge",
    "Bridge",
    "Variable",
    "SessionInfo",
    "VariableUpdate",
    "VariableUpdateStream",
    "VariableWatch",
    "set_process_bridge",
    "process_bridge",
    "DEFAULT_TIMEOUT",
]

#: Seconds a bridge call may take unless told otherwise.
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


class AsyncBridge:
    """A connection to the node's bridge server, as coroutines (any event loop; share one per process).

    Made by ``await AsyncBridge.connect(address, token)``; the blocking
    :class:`Bridge` is a thin layer over one (:attr:`Bridge.aio`).

    Args:
        address: ``host:port`` of the bridge (``SNAKEPIT_BRIDGE_ADDRESS`` in workers).
        token: The node's token (``SNAKEPIT_TOKEN`` in workers).
        timeout: Seconds any call may take unless the call says otherwise.
        source: Who this client's writes are recorded as by default:
            ``"client"`` (programs outside the pool), ``"python"`` (worker code)
            or ``"elixir"``.

    Raises:
        BridgeUnavailable: Nothing answers at ``address``.
    """

    def __init__(self, client: Any, address: str, *, timeout: float, source: str) -> None:
        from . import _native

        self._error_cls = _native.BridgeError
        self._client = client
        self.address = address
        self.source = source
        self.timeout = timeout

    @classmethod
    async def connect(
        cls, address: str, token: str, *, timeout: float = DEFAULT_TIMEOUT, source: str = "client"
    ) -> AsyncBridge:
        """Connect to the bridge at ``address`` (see the class's arguments)."""
        from . import _native

        background.register_quiesce()
        try:
            client = await _native.BridgeClient.connect(address, token, timeout)
        except _native.BridgeError as exc:
            raise bridge_error(exc.code, exc.reason, exc.message) from None
        return cls(client, address, timeout=timeout, source=source)

    def __repr__(self) -> str:
        return f"AsyncBridge({self.address!r})"

    # -- plumbing ------------------------------------------------------------

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await fn(*args)
        except self._error_cls as exc:
            raise bridge_error(exc.code, exc.reason, exc.message) from None

    def _source(self, source: Optional[str]) -> str:
        return self.source if source is None else source

    # -- node -----------------------------------------------------------------

    async def get_version(self) -> VersionRecord:
        """``{"protocol_version", "bridge_version", "runtime_version"}`` of the node."""
        return await self._call(self._client.get_version)

    # -- sessions -------------------------------------------------------------

    async def create_session(
        self, session_id: str = "", *, ttl_seconds: int = 0, metadata: Optional[Mapping[str, Any]] = None
    ) -> SessionInfo:
        """Create a session, or renew the existing one with that id (idempotent).

        Args:
            session_id: The id; ``""`` lets the node choose one.
            ttl_seconds: Time to live after the last use; 0 is the node's default (3600 s).
            metadata: Kept with a new session (ignored for an existing one).

        Raises:
            QuotaExceeded: The node holds its maximum number of sessions.
        """
        raw = await self._call(self._client.create_session, session_id, ttl_seconds, _str_map(metadata))
        return SessionInfo.from_native(raw)

    async def get_session(self, session_id: str) -> SessionInfo:
        """The session's state (its time to live is renewed).

        Raises:
            SessionNotFound: No such session.
        """
        return SessionInfo.from_native(await self._call(self._client.get_session, session_id))

    async def touch_session(self, session_id: str) -> SessionInfo:
        """Renew the session's time to live; its state.

        Raises:
            SessionNotFound: No such session.
        """
        return SessionInfo.from_native(await self._call(self._client.touch_session, session_id))

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session and its variables; whether it existed. Its watches end with ``SessionEnded``."""
        return await self._call(self._client.delete_session, session_id)

    async def list_sessions(self) -> List[SessionInfo]:
        """Every live session of the node, sorted by id."""
        return [SessionInfo.from_native(raw) for raw in await self._call(self._client.list_sessions)]

    # -- variables ------------------------------------------------------------

    async def register_variable(
        self,
        session_id: str,
        name: str,
        type: str,
        initial_value: Any,
        *,
        constraints: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Variable:
        """Register a variable (version 1).

        Args:
            session_id: The session.
            name: Name unique in the session.
            type: One of the variable types (see :class:`Variable`).
            initial_value: The value; must satisfy the type and constraints.
            constraints: E.g. ``{"min": 0, "max": 1}``; unknown keys are refused.
            metadata: Kept with the variable.
            source: Recorded writer; the bridge's :attr:`source` by default.

        Raises:
            VariableExists: The name is taken.
            InvalidVariable: Bad type, value or constraints.
            QuotaExceeded: The session holds its maximum number of variables.
            SessionNotFound: No such session.
        """
        raw = await self._call(
            self._client.register_variable,
            session_id,
            (
                name,
                type,
                _encode(initial_value),
                _encode(dict(constraints or {}), "invalid_constraints", "constraints"),
                _str_map(metadata),
            ),
            self._source(source),
        )
        return Variable.from_native(raw)

    async def get_variable(self, session_id: str, identifier: str) -> Variable:
        """One variable by name or id.

        Raises:
            VariableNotFound: No such variable.
            SessionNotFound: No such session.
        """
        return Variable.from_native(await self._call(self._client.get_variable, session_id, identifier))

    async def get_variables(self, session_id: str, identifiers: Sequence[str]) -> Tuple[List[Variable], List[str]]:
        """Several variables by names or ids: ``(found, missing)``.

        ``found`` keeps the order asked, without the missing ones; ``missing``
        lists the identifiers that name no variable.

        Raises:
            SessionNotFound: No such session.
        """
        raws, missing = await self._call(self._client.get_variables, session_id, [str(i) for i in identifiers])
        return [Variable.from_native(raw) for raw in raws], list(missing)

    async def set_variable(
        self,
        session_id: str,
        identifier: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Variable:
        """Write one variable; the variable after the write.

        Args:
            expected_version: Write only if the variable is still at this version.
            metadata: Recorded with the write and sent to watchers.
            source: Recorded writer; the bridge's :attr:`source` by default.

        Raises:
            VersionConflict: The variable is no longer at ``expected_version``.
            InvalidVariable: The value breaks the type or constraints.
            VariableNotFound: No such variable.
            SessionNotFound: No such session.
        """
        raw = await self._call(
            self._client.set_variable,
            session_id,
            (identifier, _encode(value), expected_version, _str_map(metadata)),
            self._source(source),
        )
        return Variable.from_native(raw)

    async def set_variables(
        self,
        session_id: str,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Dict[str, Variable]:
        """Write several variables atomically: all writes happen or none does.

        Args:
            values: Name (or id) → new value, written in this order.
            expected_versions: Name (or id) → version each must still be at.
            metadata: Recorded with every write.
            source: Recorded writer; the bridge's :attr:`source` by default.

        Returns:
            Each key of ``values`` → its variable after the writes.

        Raises:
            VersionConflict, InvalidVariable, VariableNotFound, SessionNotFound:
                As for :meth:`set_variable`; nothing was written.
        """
        versions = dict(expected_versions or {})
        unknown = set(versions) - set(values)
        if unknown:
            raise InvalidVariable(
                f"expected_versions names variables that are not written: {sorted(unknown)}", "invalid_argument"
            )
        shared = _str_map(metadata)
        writes = [(str(key), _encode(value), versions.get(key), shared) for key, value in values.items()]
        raws = await self._call(self._client.set_variables, session_id, writes, self._source(source))
        return {key: Variable.from_native(raw) for key, raw in zip(values.keys(), raws)}

    async def list_variables(self, session_id: str, pattern: str = "*") -> List[Variable]:
        """Variables whose name matches ``pattern`` (``*`` matches any run of characters), sorted by name.

        Raises:
            SessionNotFound: No such session.
        """
        return [Variable.from_native(raw) for raw in await self._call(self._client.list_variables, session_id, pattern)]

    async def delete_variable(self, session_id: str, identifier: str, *, source: Optional[str] = None) -> None:
        """Delete a variable; its watchers get a ``"deleted"`` update.

        Raises:
            VariableNotFound: No such variable.
            SessionNotFound: No such session.
        """
        await self._call(self._client.delete_variable, session_id, identifier, self._source(source))

    async def watch_variables(
        self,
        session_id: str,
        identifiers: Sequence[str],
        *,
        include_initial: bool = True,
        heartbeat_ms: int = 0,
        max_buffered: int = 0,
        heartbeats: bool = False,
    ) -> VariableUpdateStream:
        """Watch variables: their changes arrive, as committed, through the returned :class:`VariableUpdateStream`.

        Args:
            identifiers: Names or ids (at least one); all must exist.
            include_initial: Send each variable's current value first (no stale reads).
            heartbeat_ms: How often the node sends a heartbeat on a quiet
                stream (0: the node's default, 5000).
            max_buffered: Updates the node buffers for this watch before it
                ends it with :class:`~snakepit_bridge.errors.WatchOverflow`
                (0: the node's default, 1024).
            heartbeats: Whether the watch yields heartbeats too.

        Raises:
            VariableNotFound: A variable does not exist.
            SessionNotFound: No such session.
        """
        stream = await self._call(
            self._client.watch_variables,
            session_id,
            [str(i) for i in identifiers],
            include_initial,
            heartbeat_ms,
            max_buffered,
        )
        return VariableUpdateStream(stream, self._error_cls, heartbeats)

    # -- Elixir tools ---------------------------------------------------------

    async def list_elixir_tools(self) -> List[ElixirTool]:
        """The Elixir tools exposed to Python.

        Each is a dict with ``name``, ``description``, ``supports_streaming``
        and ``parameters`` (dicts with ``name``, ``type``, ``required`` and
        ``default``, the decoded default when there is one).
        """
        return [
            {
                "name": spec["name"],
                "description": spec["description"],
                "supports_streaming": spec["supports_streaming"],
                "parameters": [_tool_parameter(parameter) for parameter in spec["parameters"]],
            }
            for spec in await self._call(self._client.list_elixir_tools)
        ]

    async def call_elixir_tool(
        self,
        tool_name: str,
        arguments: Optional[Mapping[str, Any]] = None,
        *,
        session_id: str = "",
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Run an Elixir tool and return its result (decoded JSON, or ``bytes`` for a raw result).

        Args:
            tool_name: The tool's name.
            arguments: Keyword arguments, JSON-encoded.
            session_id: Session the call belongs to (``""``: none).
            metadata: Request metadata.
            timeout: Seconds the tool may run (the bridge's :attr:`timeout` when ``None``).

        Raises:
            ElixirToolError: The Elixir function failed (its message,
                ``error_type``); :class:`~snakepit_bridge.errors.ElixirToolNotFound`
                for an unknown tool.
            BridgeTimeout: The timeout passed.
        """
        arguments_json = _encode(dict(arguments or {}), "invalid_argument", "arguments")
        outcome = await self._call(
            self._client.execute_elixir_tool, tool_name, arguments_json, session_id, _str_map(metadata), timeout
        )
        if outcome[0] == "ok":
            _, kind, data = outcome
            return data if kind == "raw" else _decode(data)
        _, category, error_type, message, traceback = outcome
        raise ElixirToolError(
            message or f"Elixir tool {tool_name!r} failed",
            "tool_failed",
            "",
            error_type=error_type,
            category=category,
            traceback=traceback,
        )


class Bridge:
    """A connection to the node's bridge server, blocking (thread-safe; share one per process).

    A thin layer over an :class:`AsyncBridge` (:attr:`aio`): each method runs
    its coroutine on the process's background loop
    (:mod:`snakepit_bridge.background`) and waits for it, so the two never
    differ. Async code uses :attr:`aio` directly.

    Args:
        address: ``host:port`` of the bridge (``SNAKEPIT_BRIDGE_ADDRESS`` in workers).
        token: The node's token (``SNAKEPIT_TOKEN`` in workers).
        timeout: Seconds any call may take unless the call says otherwise.
        source: Who this client's writes are recorded as by default:
            ``"client"`` (programs outside the pool), ``"python"`` (worker code)
            or ``"elixir"``.

    Raises:
        BridgeUnavailable: Nothing answers at ``address``.
    """

    def __init__(self, address: str, token: str, *, timeout: float = DEFAULT_TIMEOUT, source: str = "client") -> None:
        self.aio: AsyncBridge = background.run(
            lambda: AsyncBridge.connect(address, token, timeout=timeout, source=source)
        )

    @classmethod
    def over(cls, aio: AsyncBridge) -> Bridge:
        """The blocking layer over an existing :class:`AsyncBridge` (no new connection)."""
        bridge = cls.__new__(cls)
        bridge.aio = aio
        return bridge

    def __repr__(self) -> str:
        return f"Bridge({self.address!r})"

    @property
    def address(self) -> str:
        """The bridge's address as given."""
        return self.aio.address

    @property
    def source(self) -> str:
        """Who this client's writes are recorded as by default."""
        return self.aio.source

    @property
    def timeout(self) -> float:
        """Seconds any call may take unless the call says otherwise."""
        return self.aio.timeout

    @classmethod
    def from_environment(cls) -> Bridge:
        """The process's shared bridge, connected on first use from the environment.

        Reads ``SNAKEPIT_BRIDGE_ADDRESS`` and ``SNAKEPIT_TOKEN``, which a
        Snakepit pool gives its workers (a worker moves the token out of its
        environment at start, see :func:`hide_token_from_environment`, and
        it is read from there); its writes are recorded as
        ``"python"``. A process forked from one that connected gets its own
        connection. :func:`set_process_bridge` replaces it (tests, embedding).

        Raises:
            BridgeUnavailable: The variables are not set (``reason``
                ``"not_configured"``), or nothing answers at the address.
        """
        current = _process_bridge
        if current is not None and current[0] == os.getpid():
            return current[1]
        background.run(process_bridge)
        current = _process_bridge
        assert current is not None
        return current[1]

    # -- the calls ------------------------------------------------------------

    def get_version(self) -> VersionRecord:
        """Blocking :meth:`AsyncBridge.get_version`."""
        return background.run(lambda: self.aio.get_version())

    def create_session(
        self, session_id: str = "", *, ttl_seconds: int = 0, metadata: Optional[Mapping[str, Any]] = None
    ) -> SessionInfo:
        """Blocking :meth:`AsyncBridge.create_session`."""
        return background.run(lambda: self.aio.create_session(session_id, ttl_seconds=ttl_seconds, metadata=metadata))

    def get_session(self, session_id: str) -> SessionInfo:
        """Blocking :meth:`AsyncBridge.get_session`."""
        return background.run(lambda: self.aio.get_session(session_id))

    def touch_session(self, session_id: str) -> SessionInfo:
        """Blocking :meth:`AsyncBridge.touch_session`."""
        return background.run(lambda: self.aio.touch_session(session_id))

    def delete_session(self, session_id: str) -> bool:
        """Blocking :meth:`AsyncBridge.delete_session`."""
        return background.run(lambda: self.aio.delete_session(session_id))

    def list_sessions(self) -> List[SessionInfo]:
        """Blocking :meth:`AsyncBridge.list_sessions`."""
        return background.run(lambda: self.aio.list_sessions())

    def register_variable(
        self,
        session_id: str,
        name: str,
        type: str,
        initial_value: Any,
        *,
        constraints: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Variable:
        """Blocking :meth:`AsyncBridge.register_variable`."""
        return background.run(
            lambda: self.aio.register_variable(
                session_id, name, type, initial_value, constraints=constraints, metadata=metadata, source=source
            )
        )

    def get_variable(self, session_id: str, identifier: str) -> Variable:
        """Blocking :meth:`AsyncBridge.get_variable`."""
        return background.run(lambda: self.aio.get_variable(session_id, identifier))

    def get_variables(self, session_id: str, identifiers: Sequence[str]) -> Tuple[List[Variable], List[str]]:
        """Blocking :meth:`AsyncBridge.get_variables`."""
        return background.run(lambda: self.aio.get_variables(session_id, identifiers))

    def set_variable(
        self,
        session_id: str,
        identifier: str,
        value: Any,
        *,
        expected_version: Optional[int] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Variable:
        """Blocking :meth:`AsyncBridge.set_variable`."""
        return background.run(
            lambda: self.aio.set_variable(
                session_id, identifier, value, expected_version=expected_version, metadata=metadata, source=source
            )
        )

    def set_variables(
        self,
        session_id: str,
        values: Mapping[str, Any],
        *,
        expected_versions: Optional[Mapping[str, int]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        source: Optional[str] = None,
    ) -> Dict[str, Variable]:
        """Blocking :meth:`AsyncBridge.set_variables`."""
        return background.run(
            lambda: self.aio.set_variables(
                session_id, values, expected_versions=expected_versions, metadata=metadata, source=source
            )
        )

    def list_variables(self, session_id: str, pattern: str = "*") -> List[Variable]:
        """Blocking :meth:`AsyncBridge.list_variables`."""
        return background.run(lambda: self.aio.list_variables(session_id, pattern))

    def delete_variable(self, session_id: str, identifier: str, *, source: Optional[str] = None) -> None:
        """Blocking :meth:`AsyncBridge.delete_variable`."""
        background.run(lambda: self.aio.delete_variable(session_id, identifier, source=source))

    def watch_variables(
        self,
        session_id: str,
        identifiers: Sequence[str],
        *,
        include_initial: bool = True,
        heartbeat_ms: int = 0,
        max_buffered: int = 0,
        heartbeats: bool = False,
    ) -> VariableWatch:
        """Blocking :meth:`AsyncBridge.watch_variables`: the updates through a :class:`VariableWatch`."""
        updates = background.run(
            lambda: self.aio.watch_variables(
                session_id,
                identifiers,
                include_initial=include_initial,
                heartbeat_ms=heartbeat_ms,
                max_buffered=max_buffered,
                heartbeats=heartbeats,
            )
        )
        return VariableWatch(updates)

    def list_elixir_tools(self) -> List[ElixirTool]:
        """Blocking :meth:`AsyncBridge.list_elixir_tools`."""
        return background.run(lambda: self.aio.list_elixir_tools())

    def call_elixir_tool(
        self,
        tool_name: str,
        arguments: Optional[Mapping[str, Any]] = None,
        *,
        session_id: str = "",
        metadata: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Blocking :meth:`AsyncBridge.call_elixir_tool`."""
        return background.run(
            lambda: self.aio.call_elixir_tool(
                tool_name, arguments, session_id=session_id, metadata=metadata, timeout=timeout
            )
        )


_process_lock = threading.Lock()
_process_bridge: Optional[Tuple[int, Bridge]] = None


async def process_bridge() -> AsyncBridge:
    """The process's shared bridge, as :class:`AsyncBridge` (see :meth:`Bridge.from_environment`).

    Connects on first use, in the calling event loop; the connection serves
    every loop and thread of the process.

    Raises:
        BridgeUnavailable: The variables are not set (``reason``
            ``"not_configured"``), or nothing answers at the address.
    """
    global _process_bridge
    current = _process_bridge
    if current is not None and current[0] == os.getpid():
        return current[1].aio
    address, token = bridge_settings()
    aio = await AsyncBridge.connect(address, token, source="python")
    with _process_lock:
        current = _process_bridge
        if current is not None and current[0] == os.getpid():
            return current[1].aio  # another task connected first; this connection is dropped
        _process_bridge = (os.getpid(), Bridge.over(aio))
    return aio


def set_process_bridge(bridge: Optional[Bridge]) -> None:
    """Make ``bridge`` the one :meth:`Bridge.from_environment` returns in this process.

    ``None`` forgets it, so the next use connects again from the environment.
    Meant for tests and for programs that embed tools outside a worker.
    """
    global _process_bridge
    with _process_lock:
        _process_bridge = None if bridge is None else (os.getpid(), bridge)
