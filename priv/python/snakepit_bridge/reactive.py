"""Reactive helpers over variable watches.

:class:`ReactiveVariable`, :class:`VariableGroup` and :func:`watch_for_condition`.

They work with any async session: ``self.session_context.aio`` in a tool, or
the session of ``async with SessionContext.connect(...)``. They must be used
from a running event loop (watching runs as an asyncio task)::

    temperature = ReactiveVariable(session, "temperature", 20.0)
    temperature.on_change(lambda old, new: print("temperature", old, "->", new))
    await temperature.start()          # watching; .value is the node's value
    temperature.value = 22.5           # writes the session variable (in a task)
    await temperature.flush()          # ... and waits for the write
    temperature.close()

    sensors = VariableGroup(session)
    sensors.add_variable("temperature", 20.0)
    sensors.add_variable("humidity", 50.0)
    sensors.on_any_change(lambda name, old, new: print(name, old, "->", new))
    await sensors.update_many({"temperature": 25.0, "humidity": 60.0})   # atomic

    values = await watch_for_condition(
        session, ["temperature", "humidity"], lambda v: v["temperature"] > 24, timeout=5.0
    )

Local values follow the variables' versions: an update older than what a
helper already holds is ignored, so a helper's own write and the watch's
echo of it notify listeners once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union

from .errors import SessionEnded, VariableExists, VariableNotFound
from .session_context import infer_variable_type

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import Variable, VariableUpdate
    from .session_context import AsyncSessionContext
    from .watching import AsyncVariableWatch

__all__ = ["ReactiveVariable", "VariableGroup", "watch_for_condition"]

logger = logging.getLogger(__name__)

#: ``listener(old_value, new_value)``; may be a coroutine function.
ChangeListener = Callable[[Any, Any], Union[Awaitable[None], None]]
#: ``listener(name, old_value, new_value)``; may be a coroutine function.
GroupListener = Callable[[str, Any, Any], Union[Awaitable[None], None]]


async def _call(listener: Callable[..., Any], *args: Any) -> None:
    try:
        result = listener(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("listener %r failed", listener)


async def _ensure_exists(session: AsyncSessionContext, name: str, initial_value: Any) -> None:
    """Register ``name`` with ``initial_value`` (type inferred) unless it exists or no value is given."""
    if initial_value is None:
        return
    try:
        await session.get_variable_info(name)
    except VariableNotFound:
        with contextlib.suppress(VariableExists):
            await session.register_variable(name, infer_variable_type(initial_value), initial_value)


class ReactiveVariable:
    """A local mirror of one session variable, with change listeners; setting :attr:`value` writes the variable.

    Watching starts with the first :meth:`on_change` or with :meth:`start`
    (which also waits for the node's current value). Listeners hear every
    newer version, and the node's value when it first arrives if it differs
    from ``initial_value``. If the variable does
    not exist and ``initial_value`` is given, it is registered with it (type
    inferred by :func:`~snakepit_bridge.session_context.infer_variable_type`).

    Args:
        session: An async session (``session_context.aio`` or from ``SessionContext.connect``).
        name: The variable's name.
        initial_value: :attr:`value` until the node's value arrives; also the
            value a missing variable is registered with.
        debounce_ms: Passed to the watch: at most one notification per this
            many milliseconds, the latest value last.
    """

    def __init__(
        self,
        session: AsyncSessionContext,
        name: str,
        initial_value: Any = None,
        *,
        debounce_ms: float = 0,
    ) -> None:
        self.session = session
        self.name = name
        self._initial_value = initial_value
        self._value: Any = initial_value
        self._id: Optional[str] = None
        self._version = 0
        self._debounce_ms = debounce_ms
        self._listeners: List[ChangeListener] = []
        self._watch_task: Optional[asyncio.Task[None]] = None
        self._watch: Optional[AsyncVariableWatch] = None
        self._ready: Optional[asyncio.Event] = None
        self._writes: Set[asyncio.Task[Any]] = set()
        self._group: Optional[VariableGroup] = None
        self._closed = False
        #: The last error of a write made by setting :attr:`value`, or of the watch; ``None`` when none.
        self.last_error: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"ReactiveVariable({self.name!r}, value={self._value!r}, version={self._version})"

    # -- value ---------------------------------------------------------------

    @property
    def value(self) -> Any:
        """The latest known value (no round trip)."""
        return self._value

    @value.setter
    def value(self, new_value: Any) -> None:
        """Write the session variable (in a task; :meth:`flush` waits for it).

        The value changes when the write lands.
        """
        task = asyncio.get_running_loop().create_task(self._write(new_value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    @property
    def version(self) -> int:
        """The version of :attr:`value` (0 until the node's value is known)."""
        return self._version

    async def set(self, new_value: Any) -> Variable:
        """Write the session variable and wait for it; the variable after the write.

        Raises:
            BridgeError: The write failed (e.g. ``InvalidVariable``).
        """
        variable = await self.session.set_variable(self.name, new_value)
        await self._apply(variable.id, variable.version, variable.value)
        return variable

    async def _write(self, new_value: Any) -> None:
        try:
            await self.set(new_value)
        except Exception as exc:
            self.last_error = exc
            logger.error("failed to set %s: %s", self.name, exc)

    async def flush(self) -> None:
        """Wait for the writes started by setting :attr:`value`."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _apply(self, variable_id: str, version: int, value: Any) -> None:
        """Take a state of the variable if newer than the one held; notify listeners if the value changed."""
        if variable_id == self._id and version <= self._version:
            return
        old = self._value
        known = self._id is not None
        self._id, self._version, self._value = variable_id, version, value
        if self._ready is not None:
            self._ready.set()
        if known or old != value:
            for listener in list(self._listeners):
                await _call(listener, old, value)

    async def _apply_update(self, update: VariableUpdate) -> None:
        if update.is_deleted:
            self._id, self._version = None, 0
            return
        await self._apply(update.variable_id, update.version, update.value)

    # -- watching ------------------------------------------------------------

    def on_change(self, callback: ChangeListener) -> ChangeListener:
        """Call ``callback(old_value, new_value)`` on every change (also usable as a decorator); starts watching."""
        self._listeners.append(callback)
        if self._group is None:
            self._start_watching()
        return callback

    async def start(self) -> ReactiveVariable:
        """Start watching (if not yet) and wait until the node's current value is known; returns ``self``.

        Raises:
            VariableNotFound: The variable does not exist and no ``initial_value`` was given.
        """
        if self._group is not None:
            await self._group.start()
            return self
        self._start_watching()
        assert self._ready is not None and self._watch_task is not None
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            if self.last_error is not None:
                raise self.last_error
            raise RuntimeError(f"the watch of {self.name!r} ended before its value arrived")
        return self

    def _start_watching(self) -> None:
        if self._closed:
            raise RuntimeError(f"ReactiveVariable {self.name!r} is closed")
        if self._watch_task is not None:
            return
        self._ready = asyncio.Event()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        try:
            await _ensure_exists(self.session, self.name, self._initial_value)
            self._watch = self.session.watch_variables([self.name], debounce_ms=self._debounce_ms)
            async with self._watch as updates:
                async for update in updates:
                    await self._apply_update(update)
        except asyncio.CancelledError:
            raise
        except SessionEnded as exc:
            self.last_error = exc
            logger.info("watch of %s ended with its session", self.name)
        except Exception as exc:
            self.last_error = exc
            logger.error("watch of %s failed: %s", self.name, exc)

    @property
    def watching(self) -> bool:
        """Whether the variable is being watched."""
        task = self._watch_task
        return task is not None and not task.done()

    def close(self) -> None:
        """Stop watching (the node's stream closes at once) and drop the listeners."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._listeners.clear()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the pending writes and the watch task to end."""
        await self.flush()
        self.close()
        if self._watch_task is not None:
            await asyncio.gather(self._watch_task, return_exceptions=True)

    async def __aenter__(self) -> ReactiveVariable:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


class VariableGroup:
    """Related variables watched by one stream, with group listeners and atomic updates.

    Args:
        session: An async session (``session_context.aio`` or from ``SessionContext.connect``).
        debounce_ms: Passed to the group's watch.
    """

    def __init__(self, session: AsyncSessionContext, *, debounce_ms: float = 0) -> None:
        self.session = session
        self._debounce_ms = debounce_ms
        self._variables: Dict[str, ReactiveVariable] = {}
        self._listeners: List[GroupListener] = []
        self._watch_task: Optional[asyncio.Task[None]] = None
        self._watch: Optional[AsyncVariableWatch] = None
        self._ready: Optional[asyncio.Event] = None
        self._closed = False
        self._wanted = False  # watching was asked for (listener or start)
        #: The error that ended the group's watch, if any.
        self.last_error: Optional[BaseException] = None

    def __repr__(self) -> str:
        return f"VariableGroup({self.values!r})"

    def add_variable(self, name: str, initial_value: Any = None) -> ReactiveVariable:
        """Add a variable (registered with ``initial_value`` if missing and given); its :class:`ReactiveVariable`.

        The member's own :meth:`ReactiveVariable.on_change` listeners are
        driven by the group's watch. Adding to a watching group restarts its
        watch with the new list (no listener is notified twice).
        """
        if name in self._variables:
            return self._variables[name]
        variable = ReactiveVariable(self.session, name, initial_value)
        variable._group = self
        self._variables[name] = variable
        if self._wanted:
            self._restart()
        return variable

    def __getitem__(self, name: str) -> ReactiveVariable:
        return self._variables[name]

    def __contains__(self, name: object) -> bool:
        return name in self._variables

    @property
    def variables(self) -> Dict[str, ReactiveVariable]:
        """Name → member."""
        return dict(self._variables)

    @property
    def values(self) -> Dict[str, Any]:
        """Name → latest known value of every member."""
        return {name: variable.value for name, variable in self._variables.items()}

    def on_any_change(self, callback: GroupListener) -> GroupListener:
        """Call ``callback(name, old_value, new_value)`` on every change of a member; starts watching.

        Also usable as a decorator.
        """
        self._listeners.append(callback)
        self._start_watching()
        return callback

    async def start(self) -> VariableGroup:
        """Start watching (if not yet) and wait until every member's current value is known; returns ``self``."""
        self._start_watching()
        if not self._variables:
            return self
        while True:
            assert self._ready is not None and self._watch_task is not None
            ready, task = self._ready, self._watch_task
            waiter = asyncio.ensure_future(ready.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if ready.is_set():
                return self
            if task is self._watch_task:  # the watch ended (not restarted)
                if self.last_error is not None:
                    raise self.last_error
                raise RuntimeError("the group's watch ended before the values arrived")

    def _start_watching(self) -> None:
        if self._closed:
            raise RuntimeError("VariableGroup is closed")
        self._wanted = True
        if self._watch_task is not None or not self._variables:
            return
        self._ready = asyncio.Event()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(list(self._variables), self._ready))

    def _restart(self) -> None:
        if self._watch is not None:
            self._watch.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._watch_task = None
        self._start_watching()

    async def _watch_loop(self, names: List[str], ready: asyncio.Event) -> None:
        try:
            for name in names:
                await _ensure_exists(self.session, name, self._variables[name]._initial_value)
            watch = self.session.watch_variables(names, debounce_ms=self._debounce_ms)
            self._watch = watch
            pending = set(names)
            async with watch:
                async for update in watch:
                    member = self._variables.get(update.variable_name)
                    if member is None:
                        continue
                    old = member.value
                    before = (member._id, member._version)
                    await member._apply_update(update)
                    pending.discard(update.variable_name)
                    if not pending:
                        ready.set()
                    changed = (member._id, member._version) != before and (not update.is_initial or old != member.value)
                    if changed:
                        for listener in list(self._listeners):
                            await _call(listener, update.variable_name, old, member.value)
        except asyncio.CancelledError:
            raise
        except SessionEnded as exc:
            self.last_error = exc
            logger.info("group watch ended with its session")
        except Exception as exc:
            self.last_error = exc
            logger.error("group watch failed: %s", exc)

    async def update_many(self, updates: Mapping[str, Any]) -> Dict[str, Variable]:
        """Write several variables atomically (all or none); the variables after the writes.

        Members' values and listeners are updated at once (the watch's echo
        of the same versions is then ignored).

        Raises:
            VersionConflict, InvalidVariable, VariableNotFound: Nothing was written.
        """
        written = await self.session.update_variables(updates)
        for variable in written.values():
            member = self._variables.get(variable.name)
            if member is None:
                continue
            old = member.value
            before = (member._id, member._version)
            await member._apply(variable.id, variable.version, variable.value)
            if (member._id, member._version) != before:
                for listener in list(self._listeners):
                    await _call(listener, variable.name, old, member.value)
        return written

    def close(self) -> None:
        """Stop watching and drop the members' and the group's listeners."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
        for variable in self._variables.values():
            variable.close()
        self._listeners.clear()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the watch task to end."""
        for variable in self._variables.values():
            await variable.flush()
        task = self._watch_task
        self.close()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> VariableGroup:
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


async def watch_for_condition(
    session: AsyncSessionContext,
    variables: Sequence[str],
    condition: Callable[[Dict[str, Any]], bool],
    timeout: Optional[float] = None,
) -> Dict[str, Any]:
    """Wait until ``condition(values)`` holds; the values (name → value) that satisfied it.

    Watches ``variables`` (names) with their current values first, and calls
    ``condition`` with a dict of every variable's latest value after each
    update, once all are known, so a condition that already holds returns
    at once. The watch is closed on return.

    Raises:
        asyncio.TimeoutError: ``timeout`` seconds passed first.
        SessionEnded: The session ended first.
        VariableNotFound: A variable does not exist.
        Exception: Whatever ``condition`` raises.
    """
    names = [variables] if isinstance(variables, str) else list(variables)
    wanted = list(dict.fromkeys(str(n) for n in names))

    async def wait() -> Dict[str, Any]:
        current: Dict[str, Any] = {}
        async with session.watch_variables(wanted, include_initial=True) as updates:
            async for update in updates:
                if update.is_deleted:
                    current.pop(update.variable_name, None)
                    continue
                current[update.variable_name] = update.value
                if all(name in current for name in wanted) and condition(dict(current)):
                    return dict(current)
        raise RuntimeError("the watch ended before the condition held")  # pragma: no cover - closed by us only

    return await asyncio.wait_for(wait(), timeout)
