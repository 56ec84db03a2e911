"""The process's background event loop, where the blocking APIs run the async core."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import AsyncGenerator, List

import pytest

from snakepit_bridge import background


def test_results_and_errors_come_back_as_they_are() -> None:
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    async def fail() -> None:
        raise ValueError("boom")

    async def time_out() -> None:
        await asyncio.wait_for(asyncio.sleep(10), 0.12)

    assert background.run(answer) == 42
    with pytest.raises(ValueError, match="boom"):
        background.run(fail)
    # The coroutine's own TimeoutError, raised after several wait slices,
    # is not taken for a slice ending.
    with pytest.raises(asyncio.TimeoutError):
        background.run(time_out)


def test_a_blocking_call_on_the_loop_thread_is_refused() -> None:
    async def nested() -> None:
        background.run(lambda: asyncio.sleep(0))

    with pytest.raises(RuntimeError, match="background loop's thread"):
        background.run(nested)


def test_many_threads_share_the_loop() -> None:
    results: List[int] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        async def double() -> int:
            await asyncio.sleep(0.001)
            return 2 * i

        value = background.run(double)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [2 * i for i in range(20)]


def test_leaving_an_iteration_early_closes_it() -> None:
    closed = threading.Event()

    async def numbers() -> AsyncGenerator[int, None]:
        try:
            for i in range(100):
                yield i
        finally:
            closed.set()

    items = numbers()
    taken = []
    for item in background.iterate(items, items.aclose):
        taken.append(item)
        if item == 2:
            break
    assert taken == [0, 1, 2]
    assert closed.wait(5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_loop_of_its_own() -> None:
    async def pid() -> int:
        return os.getpid()

    assert background.run(pid) == os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's outcome is its exit code
        try:
            os._exit(0 if background.run(pid) == os.getpid() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
