"""Async variable watches: :class:`AsyncVariableWatch` and the session's :class:`VariableCache`.

:meth:`AsyncSessionContext.watch_variables
<snakepit_bridge.session_context.AsyncSessionContext.watch_variables>` returns
an :class:`AsyncVariableWatch`, an async iterator of
:class:`~snakepit_bridge.bridge.VariableUpdate`::

    async for update in session.watch_variables(["temperature"], debounce_ms=100):
        print(update.variable_name, update.old_value, "->", update.value)

How it works. A reading task of the watch, in the consumer's event loop,
awaits the node's ``WatchVariables`` stream (the native ``WatchStream``'s
futures: no thread waits), keeps the session's :class:`VariableCache` fresh,
drops heartbeats and versions already seen, reconnects when the stream
breaks, and queues the updates for the iterator. The iterator applies
``filter_fn`` and the debounce and calls ``on_error``, so user callbacks run
in the event loop's thread.

Guarantees:

* Per variable, updates come in version order and no version comes twice,
  also across reconnects.
* Debounce is per variable, leading and trailing edge: the first change after
  a quiet period comes at once and opens a window of ``debounce_ms``; changes
  within the window replace each other, and the latest is delivered when the
  window closes, its ``old_value`` that of the first change of the window
  (without a ``filter_fn``: the value delivered before). So at most
  one update per variable per window, and the consumer always ends on the
  true last value.
* Reconnection (``reconnect=True``): when the stream breaks, the watch
  connects again after ``reconnect_delay_ms``, doubling the delay after each
  failed attempt (capped at 60 s), at most :data:`MAX_RECONNECT_ATTEMPTS`
  attempts in a row; a connection that delivers its first message resets the
  count. Each new stream starts with the current values (resync): a variable
  whose version did not move is skipped, one that changed meanwhile arrives as
  a ``"value_change"`` with ``resync=True``. A :class:`WatchOverflow` (the
  consumer fell more than the node's buffer behind) resyncs at once the same
  way. Every such error is reported to ``on_error`` first.
* The end of the session (:class:`SessionEnded`; also a session found missing
  when reconnecting) raises :class:`SessionEnded` from the iterator, after the
  updates received before it. So do other errors that retrying cannot fix
  (variable not found when (re)connecting, refused token, ...), and any error
  when ``reconnect=False`` or after the last attempt.
* ``break``, :meth:`AsyncVariableWatch.aclose`, leaving ``async with``, or
  cancelling the consuming task closes the node's stream at once (the node
  drops the watch; ``watcher_count`` goes down).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import threading
import time
from collections import deque
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from .errors import (
    BridgeError,
    BridgeUnavailable,
    InvalidVariable,
    SessionEnded,
    SessionNotFound,
    SessionRequired,
    VariableNotFound,
    WatchOverflow,
)
from .variable_cache import VariableCache

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import AsyncBridge, VariableUpdate, VariableUpdateStream

__all__ = [
    "AsyncVariableWatch",
    "VariableCache",
    "FilterFn",
    "ErrorCallback",
    "MAX_RECONNECT_ATTEMPTS",
    "MAX_RECONNECT_DELAY_MS",
]

logger = logging.getLogger(__name__)

#: Reconnection attempts in a row before the watch gives up and raises the last error.
MAX_RECONNECT_ATTEMPTS = 10
#: The longest wait between two reconnection attempts, in milliseconds.
MAX_RECONNECT_DELAY_MS = 60_000
#: The node's heartbeat interval when the request leaves it to the node.
_DEFAULT_HEARTBEAT_MS = 5_000
#: Raw updates held between the reading task and the iterator before the
#: task stops reading (the node's own buffer then fills, and overflows).
_LOCAL_BUFFER = 4096

#: ``filter_fn(name, old_value, new_value) -> bool``: whether to deliver an update.
FilterFn = Callable[[str, Any, Any], bool]
#: ``on_error(exception)``: told of non-fatal errors (and of the fatal one before it is raised).
ErrorCallback = Callable[[BaseException], Any]


# -- the reading task ----------------------------------------------------------


@dataclasses.dataclass
class _Seen:
    """The last state of a variable the watch passed on."""

    variable_id: str
    version: int
    value: Any
    deleted: bool = False


class _Fatal:
    """Marks the end of the watch with an error, in the item queue."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_Item = Union["VariableUpdate", _Fatal]


def _is_fatal(error: BaseException) -> bool:
    """Whether reconnecting cannot help."""
    if isinstance(error, WatchOverflow):
        return False
    if isinstance(error, (SessionEnded, SessionNotFound, VariableNotFound, InvalidVariable, SessionRequired)):
        return True
    if isinstance(error, BridgeError):
        if error.reason == "not_configured":
            return True
        return error.code in {"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED"}
    return not isinstance(error, (OSError, TimeoutError))


# The tasks of coroutine on_error callbacks: the event loop keeps only weak
# references to tasks, so one not referenced elsewhere may vanish unfinished.
_error_tasks: Set[asyncio.Future[Any]] = set()


def _error_task_done(task: asyncio.Future[Any]) -> None:
    _error_tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("on_error callback failed", exc_info=task.exception())


def _call_on_error(on_error: ErrorCallback, error: BaseException) -> None:
    try:
        result = on_error(error)
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            _error_tasks.add(task)
            task.add_done_callback(_error_task_done)
    except Exception:
        logger.exception("on_error callback failed")


class _Reader:
    """The watch's reading task and the state it shares with the iterator (the task never holds the iterator)."""

    def __init__(
        self,
        bridge_factory: Callable[[], Awaitable[AsyncBridge]],
        session_id: str,
        names: List[str],
        include_initial: bool,
        reconnect: bool,
        reconnect_delay_ms: int,
        heartbeat_ms: int,
        max_buffered: int,
        cache: Optional[VariableCache],
        on_error: Optional[ErrorCallback] = None,
    ) -> None:
        self.bridge_factory = bridge_factory
        self.on_error = on_error
        self.session_id = session_id
        self.names = names
        self.include_initial = include_initial
        self.reconnect = reconnect
        self.reconnect_delay_ms = reconnect_delay_ms
        self.heartbeat_ms = heartbeat_ms
        self.max_buffered = max_buffered
        self.cache = cache
        self.items: Deque[_Item] = deque()
        self.stopped = False
        self.lock = threading.Lock()
        self.watch: Optional[VariableUpdateStream] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.task: Optional[asyncio.Task[None]] = None
        self.wakeup: Optional[asyncio.Event] = None
        self.space: Optional[asyncio.Event] = None
        self.stop: Optional[asyncio.Event] = None
        self.seen: Dict[str, _Seen] = {}
        self.live: List[str] = []
        self.connections = 0
        self._succeeded = False
        self.ready: Optional[asyncio.Event] = None  # set once a stream delivered every initial value, or on a fatal end
        self.fatal: Optional[BaseException] = None
        self._initials = 0

    # -- lifecycle -----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeup = asyncio.Event()
        self.space = asyncio.Event()
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.task = loop.create_task(self.run(), name="snakepit-watch")

    def close(self) -> None:
        """Stop the task and cancel the node's stream now (any thread)."""
        self.stopped = True
        with self.lock:
            watch, self.watch = self.watch, None
        if watch is not None:
            watch.close()
        self._release_live()
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._stop_in_loop)

    def _stop_in_loop(self) -> None:
        for event in (self.stop, self.space, self.wakeup):
            if event is not None:
                event.set()

    # -- to the iterator -----------------------------------------------------

    def signal_ready(self) -> None:
        if self.ready is not None:
            self.ready.set()

    def report(self, error: BaseException) -> None:
        """Hand ``error`` to ``on_error`` now (the consumer may be busy elsewhere)."""
        if self.on_error is not None and not self.stopped:
            _call_on_error(self.on_error, error)

    async def post(self, item: _Item) -> None:
        assert self.space is not None and self.wakeup is not None
        while len(self.items) >= _LOCAL_BUFFER and not self.stopped:
            self.space.clear()
            await self.space.wait()
        if self.stopped:
            return
        self.items.append(item)
        self.wakeup.set()

    async def _end(self, error: BaseException) -> None:
        self.fatal = error
        await self.post(_Fatal(error))
        self.signal_ready()

    # -- the task ------------------------------------------------------------

    async def run(self) -> None:  # the reconnect loop, in one place
        assert self.stop is not None
        failures = 0
        try:
            while not self.stopped:
                self._succeeded = False
                error = await self._one_stream()
                if self.stopped or error is None:
                    return
                if self._succeeded:
                    failures = 0
                if isinstance(error, SessionNotFound) and self.connections > 0:
                    error = SessionEnded(
                        f"the session {self.session_id!r} is gone: {error.message}", "session_ended", error.code
                    )
                if _is_fatal(error) or not self.reconnect:
                    await self._end(error)
                    return
                if isinstance(error, WatchOverflow) and failures == 0:
                    logger.info("variable watch overflowed; resyncing")
                    self.report(error)
                    continue
                failures += 1
                if failures > MAX_RECONNECT_ATTEMPTS:
                    await self._end(error)
                    return
                delay_ms = min(self.reconnect_delay_ms * (2 ** (failures - 1)), MAX_RECONNECT_DELAY_MS)
                logger.warning(
                    "variable watch interrupted (%s); reconnecting in %d ms (attempt %d/%d)",
                    error,
                    delay_ms,
                    failures,
                    MAX_RECONNECT_ATTEMPTS,
                )
                self.report(error)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay_ms / 1000.0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # pragma: no cover - a bug here must not hang the consumer
            logger.exception("variable watch reader failed")
            await self._end(exc)
        finally:
            self._release_live()

    async def _one_stream(self) -> Optional[BaseException]:
        """Run one stream until it ends; the error that ended it (``None``: closed by us)."""
        try:
            bridge = await self.bridge_factory()
            watch = await bridge.watch_variables(
                self.session_id,
                self.names,
                include_initial=True,
                heartbeat_ms=self.heartbeat_ms,
                max_buffered=self.max_buffered,
                heartbeats=True,
            )
        except Exception as exc:  # classified by the caller
            return exc
        with self.lock:
            if self.stopped:
                watch.close()
                return None
            self.watch = watch
        self._initials = 0
        interval_ms = self.heartbeat_ms or _DEFAULT_HEARTBEAT_MS
        stalled_after = 3 * interval_ms / 1000.0 + 1.0
        first = True
        try:
            while True:
                try:
                    update = await asyncio.wait_for(watch.next(), stalled_after)
                except asyncio.TimeoutError:
                    return BridgeUnavailable(
                        f"no update or heartbeat for {stalled_after:.1f} s: the watch stream is presumed dead",
                        "watch_stalled",
                        "",
                    )
                except Exception as exc:
                    return exc
                if update is None:
                    if self.stopped:
                        return None
                    return BridgeUnavailable("the bridge ended the watch stream", "stream_ended", "")
                if first:
                    first = False
                    self.connections += 1
                    self._reset_failures()
                if update.is_heartbeat:
                    continue
                await self._handle(update)
                if update.is_initial:
                    self._initials += 1
                    if self._initials == len(self.names):
                        self.signal_ready()
        finally:
            with self.lock:
                if self.watch is watch:
                    self.watch = None
            watch.close()
            self._release_live()

    def _reset_failures(self) -> None:
        # A stream that delivered a message was a successful connection: the
        # count of failed attempts starts again (read by ``run``).
        self._succeeded = True

    def _release_live(self) -> None:
        with self.lock:
            live, self.live = self.live, []
        if live and self.cache is not None:
            self.cache._release_live(live)

    async def _handle(self, update: VariableUpdate) -> None:
        variable = update.variable
        if variable is None:  # pragma: no cover - only heartbeats lack one
            return
        name = variable.name
        seen = self.seen.get(name)
        cache = self.cache
        if update.update_type == "deleted":
            if cache is not None:
                cache.discard(name, update.variable_id)
            if seen is not None and seen.deleted and seen.variable_id == update.variable_id:
                return
            self.seen[name] = _Seen(update.variable_id, update.version, variable.value, deleted=True)
            await self.post(update)
            return
        if cache is not None:
            cache.update(variable)
        if update.update_type == "initial_value":
            if cache is not None:
                with self.lock:
                    if not self.stopped:
                        self.live.append(name)
                        cache._acquire_live(name)
            if seen is None:
                self.seen[name] = _Seen(update.variable_id, update.version, variable.value)
                if self.include_initial:
                    await self.post(update)
                return
            if not seen.deleted and seen.variable_id == update.variable_id and update.version <= seen.version:
                return  # nothing changed while the watch was away
            same = not seen.deleted and seen.variable_id == update.variable_id
            update = dataclasses.replace(
                update,
                update_type="value_change",
                old_value=seen.value if same else None,
                source=variable.source,
                metadata=dict(variable.update_metadata),
                timestamp=variable.updated_at,
                resync=True,
            )
        elif (
            seen is not None
            and not seen.deleted
            and seen.variable_id == update.variable_id
            and update.version <= seen.version
        ):
            return  # already passed on
        self.seen[name] = _Seen(update.variable_id, update.version, variable.value)
        await self.post(update)


# -- the iterator -----------------------------------------------------------------


class AsyncVariableWatch:
    """An async iterator of the updates of watched variables (see the module's documentation).

    Made by :meth:`AsyncSessionContext.watch_variables
    <snakepit_bridge.session_context.AsyncSessionContext.watch_variables>`;
    the node's stream opens on the first ``__anext__``. Use ``async for``,
    optionally inside ``async with`` (which closes the watch on exit), or
    call :meth:`aclose` / :meth:`close`. A watch that is garbage-collected
    (e.g. after ``break`` out of ``async for session.watch_variables(...)``)
    is closed too.
    """

    def __init__(
        self,
        bridge_factory: Callable[[], Awaitable[AsyncBridge]],
        session_id: str,
        names: Sequence[str],
        *,
        include_initial: bool = True,
        filter_fn: Optional[FilterFn] = None,
        debounce_ms: float = 0,
        on_error: Optional[ErrorCallback] = None,
        reconnect: bool = True,
        reconnect_delay_ms: float = 1000,
        heartbeat_ms: int = 0,
        max_buffered: int = 0,
        cache: Optional[VariableCache] = None,
    ) -> None:
        if isinstance(names, str):
            names = [names]
        unique = list(dict.fromkeys(str(name) for name in names))
        if not unique:
            raise ValueError("watch_variables needs at least one variable name")
        if any(not name for name in unique):
            raise ValueError("variable names must not be empty")
        if debounce_ms < 0:
            raise ValueError(f"debounce_ms must be >= 0, got {debounce_ms}")
        if reconnect_delay_ms < 0:
            raise ValueError(f"reconnect_delay_ms must be >= 0, got {reconnect_delay_ms}")
        if filter_fn is not None and not callable(filter_fn):
            raise TypeError("filter_fn must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        self.names: List[str] = unique
        self.session_id = session_id
        self._filter_fn = filter_fn
        self._debounce_s = debounce_ms / 1000.0
        self._on_error = on_error
        self._reader = _Reader(
            bridge_factory,
            session_id,
            unique,
            include_initial,
            reconnect,
            int(reconnect_delay_ms),
            int(heartbeat_ms),
            int(max_buffered),
            cache,
            on_error,
        )
        self._ready: Deque[VariableUpdate] = deque()
        self._pending: Dict[str, VariableUpdate] = {}
        self._window_end: Dict[str, float] = {}
        self._terminal: Optional[Tuple[Optional[BaseException]]] = None
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._started else "not started"
        return f"<AsyncVariableWatch {self.session_id!r} {self.names!r} {state}>"

    # -- state ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the watch was closed (by the consumer or by its end)."""
        return self._closed

    @property
    def connections(self) -> int:
        """How many streams delivered updates so far (1 + the successful reconnects)."""
        return self._reader.connections

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Close the watch now: the node's stream is cancelled, iteration ends. Idempotent; any thread."""
        self._closed = True
        self._reader.close()
        self._pending.clear()
        self._ready.clear()
        self._reader.items.clear()

    async def aclose(self) -> None:
        """Close the watch (see :meth:`close`) and wait, briefly, for its reading task to end."""
        self.close()
        task = self._reader.task
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 2.0)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self._reader.close()

    async def __aenter__(self) -> AsyncVariableWatch:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    # -- iteration -----------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._started:
            self._started = True
            self._reader.start(asyncio.get_running_loop())

    async def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Open the node's stream (if not yet) and wait until every initial value has arrived.

        From then on, every change is seen by this watch: use it before
        writing when the consumer must not miss the first writes (the stream
        otherwise opens on the first ``__anext__``). The updates stay queued
        for the iteration.

        Raises:
            asyncio.TimeoutError: Not ready within ``timeout`` seconds.
            BridgeError: The watch could not start (e.g. :class:`VariableNotFound`).
            RuntimeError: The watch is closed.
        """
        if self._closed:
            raise RuntimeError("the watch is closed")
        self._ensure_started()
        ready = self._reader.ready
        assert ready is not None
        await asyncio.wait_for(ready.wait(), timeout)
        if self._reader.fatal is not None and self._reader.connections == 0:
            raise self._reader.fatal

    def __aiter__(self) -> AsyncVariableWatch:
        return self

    async def __anext__(self) -> VariableUpdate:
        if self._closed:
            raise StopAsyncIteration
        self._ensure_started()
        wakeup = self._reader.wakeup
        assert wakeup is not None
        try:
            while True:
                self._drain()
                self._flush_due(time.monotonic())
                if self._ready:
                    return self._ready.popleft()
                if self._closed:
                    raise StopAsyncIteration
                if self._terminal is not None:
                    error = self._terminal[0]
                    self.close()
                    if error is None:
                        raise StopAsyncIteration
                    raise error
                wakeup.clear()
                if self._reader.items:
                    continue
                timeout = None
                if self._window_end and self._pending:
                    due = min(self._window_end[name] for name in self._pending)
                    timeout = max(0.0, due - time.monotonic())
                if timeout is None:
                    await wakeup.wait()
                else:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), timeout)
        except asyncio.CancelledError:
            self.close()
            raise

    # -- the pipeline --------------------------------------------------------

    def _drain(self) -> None:
        items = self._reader.items
        for _ in range(len(items)):
            if self._terminal is not None or self._closed:
                return
            try:
                item = items.popleft()
            except IndexError:  # pragma: no cover - cleared by close()
                return
            space = self._reader.space
            if space is not None:
                space.set()
            if isinstance(item, _Fatal):  # reported here, so before it is raised
                self._report(item.error)
                self._flush_all()
                self._terminal = (item.error,)
            else:
                self._offer(item)

    def _report(self, error: BaseException) -> None:
        if self._on_error is not None:
            _call_on_error(self._on_error, error)

    def _offer(self, update: VariableUpdate) -> None:
        if self._filter_fn is not None:
            try:
                keep = self._filter_fn(update.variable_name, update.old_value, update.value)
            except Exception as exc:  # the update passes
                logger.warning("filter_fn failed on %s: %r; delivering the update", update.variable_name, exc)
                self._report(exc)
                keep = True
            if not keep:
                return
        if self._debounce_s <= 0:
            self._ready.append(update)
            return
        name = update.variable_name
        now = time.monotonic()
        if update.update_type == "deleted":
            pending = self._pending.pop(name, None)
            if pending is not None:
                self._ready.append(pending)
            self._ready.append(update)
            self._window_end.pop(name, None)
            return
        window_end = self._window_end.get(name)
        if window_end is not None and now >= window_end and name in self._pending:
            # The window closed with a change pending (updates that came in
            # one batch): it is delivered first and opens the next window,
            # which this update then falls in.
            self._ready.append(self._pending.pop(name))
            window_end = now + self._debounce_s
            self._window_end[name] = window_end
        if window_end is None or now >= window_end:
            self._ready.append(update)
            self._window_end[name] = now + self._debounce_s
            return
        previous = self._pending.get(name)
        if previous is not None:
            update = dataclasses.replace(update, old_value=previous.old_value)
        self._pending[name] = update

    def _flush_due(self, now: float) -> None:
        if not self._pending:
            return
        due = sorted((self._window_end[name], name) for name in self._pending if self._window_end[name] <= now)
        for _, name in due:
            self._ready.append(self._pending.pop(name))
            self._window_end[name] = now + self._debounce_s

    def _flush_all(self) -> None:
        for _, name in sorted((self._window_end.get(name, 0.0), name) for name in self._pending):
            self._ready.append(self._pending.pop(name))
