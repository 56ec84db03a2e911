"""The worker's registry of Python objects that Elixir holds by reference.

Objects that the universal call (:mod:`snakepit_bridge.universal`) cannot
return as plain values stay in the worker; Elixir gets their id, and every
later operation on the ref looks the object up here. Iterators are entries
too, with the items fetched ahead of the consumer kept in order (see
:class:`Entry`).

Each entry belongs to a *scope*: the session it was made in, or the Elixir
process that made it outside a session. A scope holds at most
``max_per_scope`` live entries; the node releases a scope's entries when the
session ends or the process exits. An entry nobody used for ``ttl`` seconds
is released by a sweeper thread. Released ids are remembered for a while
(:data:`TOMBSTONES`), so that using one again says *released* or
*exhausted* rather than *unknown*.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Set, Tuple

from .errors import VALIDATION, ToolFailure

__all__ = ["Entry", "Pending", "RefRegistry", "TOMBSTONES", "OBJECT", "ITERATOR"]

#: How many released ids are remembered (oldest forgotten first).
TOMBSTONES = 4096

#: Default idle time to live of an entry, in seconds.
DEFAULT_TTL = 3600.0
#: Default number of live entries a scope may hold.
DEFAULT_MAX_PER_SCOPE = 10_000

OBJECT = "object"
ITERATOR = "iterator"


class Pending(NamedTuple):
    """An item pulled from an iterator, encoded, waiting to be consumed."""

    json: bytes
    #: Tagged values (refs, stream refs, bytes) in it.
    tagged: int
    #: Ids of the registry entries it made (released with it if never consumed).
    held: Tuple[str, ...]


class Entry:
    """One object held for Elixir.

    Attributes:
        id: The ref id Elixir holds.
        obj: The object (for an iterator entry: the iterator itself).
        scope: The session or process the entry belongs to.
        kind: ``"object"`` or ``"iterator"``.
        last_used: ``time.monotonic()`` of the end of its last use.
        users: Operations using it now; the sweeper leaves it alone meanwhile.
        pending: Iterator entries: items pulled from the iterator and sent,
            but not yet confirmed consumed; a fetch sends them again first,
            so no item is lost when a consumer stops in the middle of a batch.
        base: Iterator entries: the position of ``pending[0]`` among all the
            items the iterator gave (consumers confirm absolute positions, so
            confirming twice is harmless).
        done: Iterator entries: the iterator is exhausted (``pending`` may
            still hold its last items).
        failure: Iterator entries: the error the iterator raised, reported
            once ``pending`` has been consumed.
        lock: Serialises fetches on one iterator.
    """

    __slots__ = ("base", "done", "failure", "id", "kind", "last_used", "lock", "obj", "pending", "scope", "users")

    def __init__(self, ref_id: str, obj: Any, scope: str, kind: str) -> None:
        self.id = ref_id
        self.obj = obj
        self.scope = scope
        self.kind = kind
        self.last_used = time.monotonic()
        self.users = 0
        self.pending: Deque[Pending] = collections.deque()
        self.base = 0
        self.done = False
        self.failure: Optional[ToolFailure] = None
        self.lock = threading.Lock()


def _ref_error(error_type: str, message: str) -> ToolFailure:
    return ToolFailure(VALIDATION, error_type, message)


class RefRegistry:
    """Thread-safe map of ref ids to :class:`Entry`.

    Args:
        max_per_scope: Live entries one scope may hold.
        ttl: Seconds an entry may stay unused before it is released.
    """

    def __init__(self, max_per_scope: int = DEFAULT_MAX_PER_SCOPE, ttl: float = DEFAULT_TTL) -> None:
        self.max_per_scope = max_per_scope
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: Dict[str, Entry] = {}
        self._scopes: Dict[str, Set[str]] = {}
        # id -> why it is gone ("released", "expired", "exhausted").
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._sweeper: Optional[threading.Thread] = None
        self._closed = threading.Event()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def add(self, obj: Any, scope: str, kind: str = OBJECT) -> Entry:
        """Register ``obj`` in ``scope``; returns its new entry.

        Raises:
            ToolFailure: ``TooManyRefs`` when the scope already holds
                ``max_per_scope`` live entries.
        """
        entry = Entry(secrets.token_hex(12), obj, scope, kind)
        with self._lock:
            ids = self._scopes.setdefault(scope, set())
            if len(ids) >= self.max_per_scope:
                raise _ref_error(
                    "TooManyRefs",
                    f"this session or process already holds {self.max_per_scope} live Python refs; "
                    "release some (Snakepit.release/1) or raise the pool's :max_refs",
                )
            ids.add(entry.id)
            self._entries[entry.id] = entry
        self._start_sweeper()
        return entry

    def get(self, ref_id: str, *, use: bool = False) -> Entry:
        """The live entry of ``ref_id``. With ``use``, the caller uses it
        until it calls :meth:`done`, and the sweeper leaves it alone.

        Raises:
            ToolFailure: ``RefReleased`` (released, expired or exhausted
                earlier) or ``RefLost`` (this worker never held it).
        """
        with self._lock:
            entry = self._entries.get(ref_id)
            if entry is not None:
                entry.last_used = time.monotonic()
                if use:
                    entry.users += 1
                return entry
            why = self._gone.get(ref_id)
        if why is not None:
            raise _ref_error("RefReleased", f"the Python object of ref {ref_id} was {why}")
        raise _ref_error("RefLost", f"this worker holds no Python object for ref {ref_id}")

    def done(self, entries: List[Entry]) -> None:
        """End the uses :meth:`get` began; their time to live starts now."""
        with self._lock:
            now = time.monotonic()
            for entry in entries:
                entry.users -= 1
                entry.last_used = now

    def gone_reason(self, ref_id: str) -> Optional[str]:
        """Why ``ref_id`` is no longer live, if it is remembered (the last
        :data:`TOMBSTONES` releases are)."""
        with self._lock:
            return self._gone.get(ref_id)

    def release(self, ref_ids: List[str], why: str = "released") -> int:
        """Release the given entries (and the refs inside their unconsumed
        items); returns how many entries were live."""
        dropped: List[Entry] = []
        with self._lock:
            for ref_id in ref_ids:
                self._drop(ref_id, why, dropped)
        # The objects go here, outside the lock: a generator's finally
        # blocks or a __del__ may take their time.
        count = len(dropped)
        dropped.clear()
        return count

    def release_scope(self, scope: str) -> int:
        """Release every entry of ``scope``; returns how many there were."""
        with self._lock:
            ids = list(self._scopes.get(scope, ()))
        return self.release(ids)

    def scope_size(self, scope: str) -> int:
        """Live entries of ``scope``."""
        with self._lock:
            return len(self._scopes.get(scope, ()))

    def sweep(self, now: Optional[float] = None) -> int:
        """Release the entries unused for longer than the ttl; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [e.id for e in self._entries.values() if e.users == 0 and now - e.last_used > self.ttl]
        return self.release(idle, "expired (unused longer than its time to live)")

    def _drop(self, ref_id: str, why: str, dropped: List[Entry]) -> None:
        entry = self._entries.pop(ref_id, None)
        if entry is None:
            return
        dropped.append(entry)
        ids = self._scopes.get(entry.scope)
        if ids is not None:
            ids.discard(ref_id)
            if not ids:
                del self._scopes[entry.scope]
        self._gone[ref_id] = why
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)
        # Refs inside items nobody consumed go with the iterator.
        for item in entry.pending:
            for held in item.held:
                self._drop(held, why, dropped)

    def _start_sweeper(self) -> None:
        if self._sweeper is not None:
            return
        with self._lock:
            if self._sweeper is not None:
                return
            self._sweeper = threading.Thread(target=self._sweep_forever, name="snakepit-ref-sweeper", daemon=True)
            self._sweeper.start()

    def _sweep_forever(self) -> None:
        # Often enough that an entry outlives its ttl by at most a quarter.
        while not self._closed.wait(min(max(self.ttl / 4, 0.01), 60.0)):
            self.sweep()

    def close(self) -> None:
        """Release every entry and stop the sweeper."""
        self._closed.set()
        with self._lock:
            ids = list(self._entries)
        self.release(ids)
