"""Cancelling calls through the dispatcher: CallHandle, ToolCancelled, InterruptSlot.

Needs the ``snakepit_bridge._native`` extension (``mix compile`` builds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import random
import sys
import threading
import time
from operator import methodcaller
from typing import Any, Callable, Dict, Iterator, List, Optional, cast

import pytest

from snakepit_bridge import BaseAdapter, CallHandle, SessionContext, ToolCancelled, tool
from snakepit_bridge._native import InterruptSlot
from snakepit_bridge.dispatcher import ToolDispatcher
from snakepit_bridge.errors import CANCELLED_BY_CALLER, DEADLINE_EXCEEDED

WAIT = 10.0  # upper bound for anything that should happen promptly


class CancelAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.events: List[str] = []
        self.started = threading.Event()
        self.stop = threading.Event()  # lets a test end tools that were not stopped
        self.runs = 0
        self.handle: Optional[CallHandle] = None

    @tool
    def spin(self, name: str = "spin") -> str:
        self.started.set()
        try:
            while not self.stop.is_set():
                try:
                    time.sleep(0.002)
                except Exception:  # must not swallow ToolCancelled
                    self.events.append("swallowed")
            return "stopped"
        finally:
            self.events.append(f"{name} finally")

    @tool
    def quick(self, x: int, work: int = 0) -> int:
        self.runs += 1
        total = 0
        for i in range(work):
            total += i
        return x

    @tool
    def cancels_itself(self) -> str:
        assert self.handle is not None
        self.handle.cancel()
        return "returned"

    @tool
    async def wait_forever(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.events.append("async finally")

    @tool(supports_streaming=True)
    def busy_gen(self) -> Iterator[Dict[str, int]]:
        try:
            yield {"i": 0}
            self.started.set()
            while not self.stop.is_set():
                time.sleep(0.002)
            yield {"i": 1}
        finally:
            self.events.append("gen finally")

    @tool(supports_streaming=True)
    async def busy_agen(self):
        try:
            yield {"i": 0}
            self.started.set()
            await asyncio.sleep(3600)
            yield {"i": 1}
        finally:
            self.events.append("agen finally")

    @tool
    def deadline_info(self) -> Dict[str, Any]:
        ctx = self.session_context
        assert ctx is not None
        return {"deadline": ctx.deadline, "remaining": ctx.time_remaining(), "cancelled": ctx.cancelled}


@pytest.fixture
def adapter() -> Iterator[CancelAdapter]:
    a = CancelAdapter()
    yield a
    a.stop.set()


@pytest.fixture
def dispatcher(adapter: CancelAdapter) -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(adapter, "cancel-worker")
    yield d
    d.shutdown()


class InThread:
    """Runs ``fn`` in a new thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # ToolCancelled is the point
            self.error = exc

    def join(self) -> InThread:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the call did not stop"
        return self


def call(d: ToolDispatcher, name: str, args: Any = None, handle: Optional[CallHandle] = None) -> Any:
    payload, _, _ = d.call(name, json.dumps(args or {}).encode(), {}, "s", {}, handle=handle)
    return json.loads(payload)


def open_stream(d: ToolDispatcher, name: str, handle: CallHandle) -> Iterator[Any]:
    return d.open_stream(name, b"", {}, "s", {}, handle=handle)


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT), "the tool did not start"


# -- ToolCancelled ---------------------------------------------------------------


def test_tool_cancelled_is_not_an_exception() -> None:
    assert issubclass(ToolCancelled, BaseException)
    assert not issubclass(ToolCancelled, Exception)
    assert str(ToolCancelled(DEADLINE_EXCEEDED)) == "the call's deadline passed"
    assert str(ToolCancelled(CANCELLED_BY_CALLER)) == "the caller cancelled the call"
    assert str(ToolCancelled()) == "the call was cancelled"
    assert ToolCancelled().reason == ""


# -- sync tools ----------------------------------------------------------------


def test_cancel_raises_in_the_thread_of_a_sync_tool(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    running = InThread(lambda: call(dispatcher, "spin", handle=handle))
    wait_for(adapter.started)
    assert handle.cancel() is True
    assert handle.cancel() is False  # once is enough
    running.join()
    assert isinstance(running.error, ToolCancelled)
    assert running.error.reason == CANCELLED_BY_CALLER
    # Its `except Exception` did not catch it, and its `finally` ran before the call returned.
    assert adapter.events == ["spin finally"]
    assert handle.cancelled and handle.reason == CANCELLED_BY_CALLER


def test_cancel_reason_reaches_the_caller(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call(timeout=60)
    running = InThread(lambda: call(dispatcher, "spin", handle=handle))
    wait_for(adapter.started)
    handle.cancel(DEADLINE_EXCEEDED)
    assert isinstance(running.join().error, ToolCancelled)
    assert running.error.reason == DEADLINE_EXCEEDED  # type: ignore[union-attr]


def test_cancel_targets_only_its_own_call(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    first, second = dispatcher.new_call(), dispatcher.new_call()
    running_first = InThread(lambda: call(dispatcher, "spin", {"name": "first"}, handle=first))
    wait_for(adapter.started)
    adapter.started.clear()
    running_second = InThread(lambda: call(dispatcher, "spin", {"name": "second"}, handle=second))
    wait_for(adapter.started)
    first.cancel()
    assert isinstance(running_first.join().error, ToolCancelled)
    assert adapter.events == ["first finally"]
    assert running_second.thread.is_alive()
    second.cancel()
    assert isinstance(running_second.join().error, ToolCancelled)
    assert adapter.events == ["first finally", "second finally"]


def test_cancel_before_the_call_starts_runs_nothing(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    assert handle.cancel() is True
    with pytest.raises(ToolCancelled):
        call(dispatcher, "quick", {"x": 1}, handle=handle)
    assert adapter.runs == 0


def test_cancel_after_the_call_finished_does_nothing(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    assert call(dispatcher, "quick", {"x": 7}, handle=handle) == 7
    assert handle.cancel() is False
    assert not handle.cancelled
    # The same thread goes on running Python code and other calls undisturbed.
    assert sum(range(100_000)) == 4_999_950_000
    assert call(dispatcher, "quick", {"x": 8}, handle=dispatcher.new_call()) == 8


def test_a_cancel_landing_as_the_tool_returns_stays_in_its_call(
    adapter: CancelAdapter, dispatcher: ToolDispatcher
) -> None:
    for _ in range(50):
        adapter.handle = handle = dispatcher.new_call()
        with contextlib.suppress(ToolCancelled):  # landed before the tool returned
            assert call(dispatcher, "cancels_itself", handle=handle) == "returned"
        # Whatever happened, nothing is left pending for the code that follows.
        assert sum(range(10_000)) == 49_995_000
        assert call(dispatcher, "quick", {"x": 3}) == 3


def test_racing_cancels_never_reach_a_later_call(dispatcher: ToolDispatcher) -> None:
    """Cancels arrive at random moments around the end of each call; the next call on the thread must not see them."""
    rounds = 1000
    handles: queue.Queue[Optional[CallHandle]] = queue.Queue()
    outcomes: List[str] = []
    stray: List[BaseException] = []

    def cancel_randomly() -> None:
        rng = random.Random(1234)
        while True:
            handle = handles.get()
            if handle is None:
                return
            for _ in range(rng.randrange(0, 3000)):
                pass
            handle.cancel()

    def run_calls() -> None:
        rng = random.Random(42)
        try:
            for i in range(rounds):
                handle = dispatcher.new_call()
                cancellable = i % 2 == 0
                if cancellable:
                    handles.put(handle)
                try:
                    result = call(dispatcher, "quick", {"x": i, "work": rng.randrange(0, 3000)}, handle=handle)
                    outcomes.append("ok" if result == i else f"wrong result {result}")
                except ToolCancelled:
                    outcomes.append("cancelled" if cancellable else f"call {i} hit by another call's cancel")
        except BaseException as exc:  # a stray ToolCancelled between calls
            stray.append(exc)
        finally:
            handles.put(None)

    # Switch threads very often, so that cancels land at every point of a call.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        canceller = threading.Thread(target=cancel_randomly, daemon=True)
        canceller.start()
        runner = InThread(run_calls)
        runner.thread.join(60)
        canceller.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
    assert stray == []
    assert len(outcomes) == rounds
    assert set(outcomes) <= {"ok", "cancelled"}, [o for o in outcomes if o not in ("ok", "cancelled")]
    assert all(outcome == "ok" for outcome in outcomes[1::2])
    assert "cancelled" in outcomes  # the cancels did reach running calls


# -- the native slot -------------------------------------------------------------


def test_slot_raises_in_the_registered_thread() -> None:
    slot = InterruptSlot(ToolCancelled)
    assert slot.thread_id is None and not slot.interrupted
    assert slot.enter() is True
    assert slot.thread_id == threading.get_ident()
    with pytest.raises(ToolCancelled):
        slot.interrupt()
        for _ in range(1000):  # the exception lands at one of these instructions
            pass
    slot.exit()
    assert slot.interrupted and slot.thread_id is None
    assert slot.interrupt() is False  # at most once
    assert slot.enter() is False  # and never again
    with pytest.raises(TypeError):
        InterruptSlot(cast(Any, int))  # not an exception class


def _interrupt_while_in_c(chain: List[Callable[[], Any]], slot: InterruptSlot) -> None:
    """Run ``chain`` (C callables only, so no Python instruction runs between
    them) while another thread interrupts ``slot`` once ``ready`` is released."""
    ready, gate = threading.Lock(), threading.Lock()
    ready.acquire()
    gate.acquire()

    def interrupter() -> None:
        ready.acquire()  # released by the chain after slot.enter()
        slot.interrupt()
        gate.release()

    other = threading.Thread(target=interrupter)
    other.start()
    list(map(methodcaller("__call__"), [slot.enter, ready.release, gate.acquire, *chain]))
    other.join(WAIT)


def test_slot_exit_withdraws_an_undelivered_exception() -> None:
    slot = InterruptSlot(ToolCancelled)
    # exit() runs right after the interrupt, before any Python instruction:
    # the scheduled exception must never be raised.
    _interrupt_while_in_c([slot.exit], slot)
    for _ in range(10_000):
        pass
    assert slot.interrupted


def test_slot_without_exit_delivers_the_exception() -> None:
    # The control experiment for the test above.
    slot = InterruptSlot(ToolCancelled)
    with pytest.raises(ToolCancelled):
        _interrupt_while_in_c([], slot)
        for _ in range(10_000):
            pass
    slot.exit()


# -- async tools ---------------------------------------------------------------


def test_cancel_cancels_the_task_of_an_async_tool(adapter: CancelAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    running = InThread(lambda: call(dispatcher, "wait_forever", handle=handle))
    wait_for(adapter.started)
    assert handle.cancel() is True
    running.join()
    assert isinstance(running.error, ToolCancelled)
    # The call returned after the coroutine's cleanup, not before.
    assert adapter.events == ["async finally"]


# -- streams -------------------------------------------------------------------


def test_cancel_interrupts_a_sync_generator_busy_between_yields(
    adapter: CancelAdapter, dispatcher: ToolDispatcher
) -> None:
    handle = dispatcher.new_call()
    chunks = open_stream(dispatcher, "busy_gen", handle)
    assert json.loads(next(chunks)[0]) == {"i": 0}
    running = InThread(lambda: next(chunks))
    wait_for(adapter.started)
    handle.cancel()
    assert isinstance(running.join().error, ToolCancelled)
    assert adapter.events == ["gen finally"]
    chunks.close()  # type: ignore[attr-defined]
    assert adapter.events == ["gen finally"]


def test_cancel_interrupts_an_async_generator_busy_between_yields(
    adapter: CancelAdapter, dispatcher: ToolDispatcher
) -> None:
    handle = dispatcher.new_call()
    chunks = open_stream(dispatcher, "busy_agen", handle)
    assert json.loads(next(chunks)[0]) == {"i": 0}
    running = InThread(lambda: next(chunks))
    wait_for(adapter.started)
    handle.cancel()
    assert isinstance(running.join().error, ToolCancelled)
    assert adapter.events == ["agen finally"]
    chunks.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("tool_name, cleanup", [("busy_gen", "gen finally"), ("busy_agen", "agen finally")])
def test_cancel_between_steps_stops_the_next_one(
    adapter: CancelAdapter, dispatcher: ToolDispatcher, tool_name: str, cleanup: str
) -> None:
    handle = dispatcher.new_call()
    chunks = open_stream(dispatcher, tool_name, handle)
    next(chunks)
    handle.cancel()
    with pytest.raises(ToolCancelled):
        next(chunks)
    # The generator was closed at its `yield`, without running on.
    assert adapter.events == [cleanup]
    assert not adapter.started.is_set()
    with pytest.raises(StopIteration):
        next(chunks)


def test_stream_cancel_after_the_end_does_nothing(dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    assert next(json.loads(p) for p, *_ in open_stream(dispatcher, "deadline_info", handle))["cancelled"] is False
    assert handle.cancel() is False


# -- deadlines -----------------------------------------------------------------


def test_the_deadline_reaches_the_tool(dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call(timeout=30)
    assert handle.deadline is not None
    info = call(dispatcher, "deadline_info", handle=handle)
    assert info["deadline"] == handle.deadline
    assert 29 < info["remaining"] <= 30
    assert info["cancelled"] is False
    assert call(dispatcher, "deadline_info") == {"deadline": None, "remaining": None, "cancelled": False}


def test_time_remaining() -> None:
    assert SessionContext("s", "w").time_remaining() is None
    assert SessionContext("s", "w", deadline=time.monotonic() - 5).time_remaining() == 0.0
    remaining = SessionContext("s", "w", deadline=time.monotonic() + 5).time_remaining()
    assert remaining is not None and 4 < remaining <= 5
    assert CallHandle(timeout=-1, interruptible=False).time_remaining() == 0.0


def test_handles_without_the_slot_stop_at_the_next_step(dispatcher: ToolDispatcher) -> None:
    handle = CallHandle(interruptible=False)
    handle.cancel()
    with pytest.raises(ToolCancelled):
        call(dispatcher, "quick", {"x": 1}, handle=handle)
    assert "cancelled" in repr(handle)
