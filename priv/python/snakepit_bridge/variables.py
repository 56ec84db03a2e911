"""Session variables as Python sees them: the records the node sends
(:class:`Variable`, :class:`SessionInfo`, :class:`VariableUpdate`), a
watch's updates (:class:`VariableUpdateStream`, and blocking
:class:`VariableWatch`), and how values travel
(JSON: anything :func:`json.dumps` accepts, plus sets, dataclasses and
objects with ``tolist()``). :mod:`snakepit_bridge.bridge` is the client
that uses them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Type

from . import background
from .errors import (
    InvalidVariable,
    bridge_error,
)
from .records import (
    ElixirToolParameter,
    ParameterSpecRecord,
    SessionRecord,
    VariableRecord,
    VariableUpdateRecord,
)
from .serialization import _json_default

if TYPE_CHECKING:  # pragma: no cover
    from . import _native

__all__ = ["Variable", "SessionInfo", "VariableUpdate", "VariableUpdateStream", "VariableWatch"]

#: The longest wait a blocking watch accepts, in seconds (a year).
_MAX_TIMEOUT = 365.0 * 24 * 3600

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time(us: int) -> datetime:
    """Unix microseconds → an aware UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=us)


def _encode(value: Any, reason: str = "invalid_value", what: str = "value") -> bytes:
    """JSON text of ``value``; :class:`InvalidVariable` (nothing sent) when it has none."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidVariable(f"{what} is not JSON-serializable: {exc}", reason) from None
    return text.encode("utf-8")


def _decode(data: bytes) -> Any:
    return json.loads(data) if data else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _tool_parameter(spec: ParameterSpecRecord) -> ElixirToolParameter:
    """A parameter as listed to Python: its default decoded, present only when there is one."""
    parameter: ElixirToolParameter = {"name": spec["name"], "type": spec["type"], "required": spec["required"]}
    if spec["default_json"]:
        parameter["default"] = json.loads(spec["default_json"])
    return parameter


def _str_map(metadata: Optional[Mapping[str, Any]]) -> Optional[Dict[str, str]]:
    if metadata is None:
        return None
    return {str(k): str(v) for k, v in metadata.items()}


@dataclass
class Variable:
    """A session variable as stored by the node.

    Attributes:
        id: Id unique in the node (e.g. ``"var_42"``); a name registered again gets a new id.
        name: Name unique in the session.
        type: ``"float"``, ``"integer"``, ``"string"``, ``"boolean"``, ``"choice"``,
            ``"module"``, ``"embedding"``, ``"tensor"`` or ``"json"``.
        value: The current value, decoded from JSON.
        constraints: The constraints (``{}`` when none).
        metadata: Metadata given at registration.
        version: 1 at registration, +1 per write.
        source: Who wrote the current value: ``"elixir"``, ``"python"`` or ``"client"``.
        update_metadata: Metadata of the write that produced the current value.
        created_at: Registration time (UTC).
        updated_at: Time of the last write (UTC).
    """

    id: str
    name: str
    type: str
    value: Any
    constraints: Dict[str, Any] = field(default_factory=dict)
    metadata: Dict[str, str] = field(default_factory=dict)
    version: int = 1
    source: str = ""
    update_metadata: Dict[str, str] = field(default_factory=dict)
    created_at: datetime = _EPOCH
    updated_at: datetime = _EPOCH

    @classmethod
    def from_native(cls, raw: VariableRecord) -> Variable:
        """Build from the dict :class:`_native.BridgeClient` returns."""
        return cls(
            id=raw["id"],
            name=raw["name"],
            type=raw["type"],
            value=_decode(raw["value_json"]),
            constraints=_decode(raw["constraints_json"]) or {},
            metadata=dict(raw["metadata"]),
            version=raw["version"],
            source=raw["source"],
            update_metadata=dict(raw["update_metadata"]),
            created_at=_time(raw["created_at_us"]),
            updated_at=_time(raw["updated_at_us"]),
        )

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict of the fields (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "value": self.value,
            "constraints": self.constraints,
            "metadata": self.metadata,
            "version": self.version,
            "source": self.source,
            "update_metadata": self.update_metadata,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass
class SessionInfo:
    """The state of a session.

    Attributes:
        session_id: The session's id.
        created_at: Creation time (UTC).
        last_used_at: Last use by any request naming the session (UTC).
        ttl_seconds: Time to live after the last use.
        expires_at: When the session expires unless used again (UTC).
        metadata: Metadata given at creation.
        variable_count: Number of variables.
        watcher_count: Live watch streams and Elixir watchers.
    """

    session_id: str
    created_at: datetime
    last_used_at: datetime
    ttl_seconds: int
    expires_at: datetime
    metadata: Dict[str, str] = field(default_factory=dict)
    variable_count: int = 0
    watcher_count: int = 0

    @classmethod
    def from_native(cls, raw: SessionRecord) -> SessionInfo:
        """Build from the dict :class:`_native.BridgeClient` returns."""
        return cls(
            session_id=raw["session_id"],
            created_at=_time(raw["created_at_us"]),
            last_used_at=_time(raw["last_used_at_us"]),
            ttl_seconds=raw["ttl_seconds"],
            expires_at=_time(raw["expires_at_us"]),
            metadata=dict(raw["metadata"]),
            variable_count=raw["variable_count"],
            watcher_count=raw["watcher_count"],
        )


@dataclass
class VariableUpdate:
    """One event of a variable watch.

    Attributes:
        update_type: ``"initial_value"``, ``"value_change"``, ``"deleted"`` or ``"heartbeat"``.
        variable_id: Id of the variable (``""`` for heartbeats).
        variable: The variable after the change (its last state for
            ``"deleted"``; ``None`` for heartbeats).
        old_value: The value before the change (``None`` unless ``"value_change"``).
        source: Who made the change: ``"elixir"``, ``"python"`` or ``"client"``.
        metadata: Metadata of the write.
        timestamp: When the change was committed (heartbeats: when sent), UTC.
        version: The variable's version after the change (0 for heartbeats).
        resync: ``True`` for a change the async watch
            (:meth:`AsyncSessionContext.watch_variables
            <snakepit_bridge.session_context.AsyncSessionContext.watch_variables>`)
            learned of when it resynced after a reconnect or an overflow:
            the variable changed (maybe several times) while the watch was
            away, and this carries its value when the watch came back, with
            ``old_value`` the last value delivered before.
    """

    update_type: str
    variable_id: str
    variable: Optional[Variable]
    old_value: Any
    source: str
    metadata: Dict[str, str]
    timestamp: datetime
    version: int
    resync: bool = False

    @classmethod
    def from_native(cls, raw: VariableUpdateRecord) -> VariableUpdate:
        """Build from the dict :meth:`_native.WatchStream.next` returns."""
        variable = raw["variable"]
        return cls(
            update_type=raw["update_type"],
            variable_id=raw["variable_id"],
            variable=Variable.from_native(variable) if variable is not None else None,
            old_value=_decode(raw["old_value_json"]),
            source=raw["update_source"],
            metadata=dict(raw["update_metadata"]),
            timestamp=_time(raw["timestamp_us"]),
            version=raw["version"],
        )

    @property
    def name(self) -> str:
        """Name of the variable (``""`` for heartbeats)."""
        return self.variable.name if self.variable is not None else ""

    @property
    def value(self) -> Any:
        """The value after the change (``None`` for heartbeats)."""
        return self.variable.value if self.variable is not None else None

    @property
    def variable_name(self) -> str:
        """Name of the variable (``""`` for heartbeats); the same as :attr:`name`."""
        return self.name

    @property
    def is_initial(self) -> bool:
        """Whether this is the current value sent when the watch started."""
        return self.update_type == "initial_value"

    @property
    def is_deleted(self) -> bool:
        """Whether the variable was deleted (:attr:`value` is its last value)."""
        return self.update_type == "deleted"

    @property
    def change_magnitude(self) -> Optional[float]:
        """``abs(value - old_value)`` when both are numbers (not booleans); else ``None``."""
        old, new = self.old_value, self.value
        if not _is_number(old) or not _is_number(new):
            return None
        magnitude: float = abs(new - old)
        return magnitude

    @property
    def is_heartbeat(self) -> bool:
        """Whether this is a heartbeat (no variable; the stream is alive but quiet)."""
        return self.update_type == "heartbeat"


class VariableUpdateStream:
    """The updates of one variable watch, in order, as an async iterator (see
    :meth:`AsyncBridge.watch_variables <snakepit_bridge.bridge.AsyncBridge.watch_variables>`).

    Iteration ends when the watch is closed or the node ends it cleanly; it
    raises :class:`~snakepit_bridge.errors.WatchOverflow` when the watcher
    fell too far behind, :class:`~snakepit_bridge.errors.SessionEnded` when
    the session went away. ``async with`` it, or call :meth:`close`, to
    cancel the watch; one that is garbage-collected is cancelled too.
    Cancelling a task that awaits :meth:`next` loses no update.
    """

    def __init__(
        self, stream: _native.WatchStream, error_cls: Type[_native.BridgeError], heartbeats: bool = False
    ) -> None:
        self._stream = stream
        self._error_cls = error_cls
        self._heartbeats = heartbeats

    async def next(self) -> Optional[VariableUpdate]:
        """The next update; ``None`` once the watch is closed or the node ended it cleanly.

        Heartbeats are skipped unless the watch was started with ``heartbeats=True``.

        Raises:
            BridgeError: The watch ended with an error (``WatchOverflow``,
                ``SessionEnded``, ``BridgeUnavailable``, ...).
        """
        while True:
            try:
                raw = await self._stream.next()
            except self._error_cls as exc:
                raise bridge_error(exc.code, exc.reason, exc.message) from None
            if raw is None:
                return None
            update = VariableUpdate.from_native(raw)
            if update.is_heartbeat and not self._heartbeats:
                continue
            return update

    def __aiter__(self) -> VariableUpdateStream:
        return self

    async def __anext__(self) -> VariableUpdate:
        update = await self.next()
        if update is None:
            raise StopAsyncIteration
        return update

    def close(self) -> None:
        """Cancel the watch at once (from any thread); a waiting :meth:`next` answers ``None``."""
        self._stream.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return bool(self._stream.closed)

    async def __aenter__(self) -> VariableUpdateStream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()


class VariableWatch:
    """The updates of one variable watch, in order, blocking (see :meth:`Bridge.watch_variables`).

    Iterate over it, or poll with :meth:`next`: a blocking layer over a
    :class:`VariableUpdateStream`, read on the process's background loop
    (:mod:`snakepit_bridge.background`). Iteration ends and errors are
    raised as there. Use it as a context manager, or call :meth:`close`, to
    cancel the watch; one that is garbage-collected is cancelled too.
    """

    def __init__(self, updates: VariableUpdateStream) -> None:
        self._updates = updates

    def next(self, timeout: Optional[float] = None) -> Optional[VariableUpdate]:
        """Wait for the next update; ``None`` when none came within ``timeout`` seconds.

        ``timeout=None`` waits as long as it takes.

        Raises:
            StopIteration: The watch was closed, or the node ended it cleanly.
            BridgeError: The watch ended with an error (``WatchOverflow``,
                ``SessionEnded``, ``BridgeUnavailable``, ...).
        """
        if timeout is not None and not 0 <= timeout <= _MAX_TIMEOUT:
            raise ValueError(f"timeout must be a number of seconds in [0, {_MAX_TIMEOUT}], got {timeout}")
        try:
            update = background.run(lambda: asyncio.wait_for(self._updates.next(), timeout))
        except asyncio.TimeoutError:
            return None
        if update is None:
            raise StopIteration
        return update

    def __iter__(self) -> Iterator[VariableUpdate]:
        return self

    def __next__(self) -> VariableUpdate:
        update = self.next(None)
        assert update is not None  # no timeout: an update or an end
        return update

    def close(self) -> None:
        """Cancel the watch at once (from any thread); a waiting :meth:`next` ends with ``StopIteration``."""
        self._updates.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._updates.closed

    def __enter__(self) -> VariableWatch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
