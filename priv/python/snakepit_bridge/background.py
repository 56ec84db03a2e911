"""The process's background event loop, where the blocking APIs run the async core.

The native clients' methods are coroutines (``snakepit_bridge._native``).
The blocking APIs — :class:`~snakepit_bridge.bridge.Bridge`, the session
context's methods inside tools, :meth:`SnakepitClient.sync
<snakepit_bridge.client.SnakepitClient.sync>` — are thin layers that run
those coroutines here: one event loop in one daemon thread per process,
started on first use (again in a forked child). The calling thread waits
on a future in short slices, running Python between them, so Ctrl-C in the
main thread and the worker's cancellation of a tool (an exception raised
into the tool's thread) interrupt the wait; the interrupted call is
cancelled (its RPC ends) before the exception goes on.

A blocking call made on the loop's own thread would wait for itself;
it raises :class:`RuntimeError` instead.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from typing import AsyncIterator, Awaitable, Callable, Iterator, Optional, Tuple, TypeVar

__all__ = ["run", "iterate", "register_quiesce"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: Optional[Tuple[int, asyncio.AbstractEventLoop, threading.Thread]] = None
_quiesce_registered = False
#: Seconds a blocked caller waits before running Python again (to take
#: exceptions raised into its thread).
_SLICE = 0.05


def register_quiesce() -> None:
    """At exit, wait for the native runtime's wakes in progress (see
    ``snakepit_bridge._native.quiesce``): one still running when the
    interpreter finalizes would abort the process."""
    global _quiesce_registered
    if not _quiesce_registered:
        from ._native import quiesce

        atexit.register(quiesce)
        _quiesce_registered = True


def _background_loop() -> Tuple[asyncio.AbstractEventLoop, threading.Thread]:
    global _loop
    with _lock:
        if _loop is not None and _loop[0] == os.getpid():
            return _loop[1], _loop[2]
        register_quiesce()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="snakepit-background", daemon=True)
        thread.start()
        _loop = (os.getpid(), loop, thread)
        return loop, thread


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` on the background loop and wait for its result.

    ``make`` is called on the loop's thread. If the wait is interrupted
    (Ctrl-C, an exception raised into this thread), the coroutine is
    cancelled and given up to 5 s to end before the exception goes on.

    Raises:
        RuntimeError: Called on the background loop's own thread.
    """
    loop, thread = _background_loop()
    if threading.current_thread() is thread:
        raise RuntimeError("a blocking Snakepit call on the background loop's thread: await the async API instead")

    async def call() -> T:
        return await make()

    future = asyncio.run_coroutine_threadsafe(call(), loop)
    try:
        while True:
            try:
                return future.result(timeout=_SLICE)
            except concurrent.futures.TimeoutError:
                if future.done():  # the coroutine's own TimeoutError, or done just now
                    return future.result()
    except BaseException:
        future.cancel()
        concurrent.futures.wait([future], timeout=5)
        raise


def iterate(items: AsyncIterator[T], close: Optional[Callable[[], Awaitable[None]]] = None) -> Iterator[T]:
    """Iterate the async iterator ``items`` from blocking code, one item per :func:`run`.

    Leaving the loop early (``break``, an exception, the generator closed)
    awaits ``close()`` when given.
    """
    try:
        while True:
            try:
                yield run(items.__anext__)
            except StopAsyncIteration:
                return
    finally:
        if close is not None:
            run(close)
