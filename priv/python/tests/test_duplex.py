"""Duplex calls through the dispatcher: ``open_stream(..., inputs=source)``.

The input sources here are Python test doubles of the native
``InputIterator`` (same protocol: blocking ``__next__`` of ``(data, is_raw)``,
``close()`` from any thread); the Rust tests in
``native/snakepit_core/tests/python_worker.rs`` run the real one.
"""

from __future__ import annotations

import array
import asyncio
import json
import math
import queue
import sys
import threading
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from snakepit_bridge import BaseAdapter, CallHandle, ToolCancelled, ToolFailure, tool
from snakepit_bridge._native import InputIterator
from snakepit_bridge.adapters.showcase import ShowcaseAdapter
from snakepit_bridge.dispatcher import ToolDispatcher
from snakepit_bridge.duplex import AsyncInputs, Inputs, decode_input
from snakepit_bridge.errors import DEADLINE_EXCEEDED

WAIT = 10.0  # upper bound for anything that should happen promptly

_END = object()


class FeedSource:
    """A test input source: the test feeds it; ``__next__`` blocks until an input, the end or ``close()``."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self.pulled = 0
        self.waiting = threading.Event()  # set while a __next__ waits for an input
        self.closed = threading.Event()

    def send(self, *values: Any) -> FeedSource:
        for value in values:
            self._queue.put((json.dumps(value).encode(), False))
        return self

    def send_raw(self, data: bytes) -> FeedSource:
        self._queue.put((data, True))
        return self

    def send_payload(self, data: bytes, is_raw: bool) -> FeedSource:
        self._queue.put((data, is_raw))
        return self

    def end(self) -> FeedSource:
        self._queue.put(_END)
        return self

    def close(self) -> None:
        self.closed.set()
        self._queue.put(_END)

    def __iter__(self) -> FeedSource:
        return self

    def __next__(self) -> Tuple[bytes, bool]:
        self.waiting.set()
        try:
            item = self._queue.get()
        finally:
            self.waiting.clear()
        if item is _END:
            self._queue.put(_END)  # stays ended
            raise StopIteration
        self.pulled += 1
        return item  # type: ignore[no-any-return]


def _show(value: Any) -> Any:
    return {"bytes": value.hex()} if isinstance(value, bytes) else value


class DuplexAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.events: List[str] = []
        self.inputs_seen: Any = None

    @tool(supports_streaming=True)
    def describe_inputs(self, inputs: Iterator[Any], label: str = "") -> Iterator[Dict[str, Any]]:
        self.inputs_seen = inputs
        for value in inputs:
            yield {"label": label, "type": type(value).__name__, "value": _show(value)}

    @tool(supports_streaming=True)
    async def async_describe_inputs(self, inputs: AsyncIterator[Any], label: str = "") -> AsyncIterator[Dict[str, Any]]:
        self.inputs_seen = inputs
        async for value in inputs:
            yield {"label": label, "type": type(value).__name__, "value": _show(value)}

    @tool
    def count_inputs(self, inputs: Iterator[Any]) -> int:
        return sum(1 for _ in inputs)

    @tool
    async def async_count_inputs(self, inputs: AsyncIterator[Any]) -> int:
        count = 0
        async for _ in inputs:
            count += 1
        return count

    @tool(supports_streaming=True)
    def first_only(self, inputs: Iterator[Any]) -> Iterator[Any]:
        yield next(inputs)

    @tool(supports_streaming=True)
    def no_inputs(self, x: int = 1) -> Iterator[int]:
        yield x

    @tool(supports_streaming=True)
    def any_kwargs(self, **kwargs: Any) -> Iterator[Dict[str, Any]]:
        yield {"inputs": list(kwargs.pop("inputs")), "others": kwargs}

    @tool(supports_streaming=True)
    def waits(self, inputs: Iterator[Any]) -> Iterator[Any]:
        try:
            for value in inputs:
                self.events.append(f"got {value}")
                yield value
            self.events.append("end of input")
        except ToolCancelled:
            self.events.append("cancelled")
            raise
        finally:
            self.events.append("finally")

    @tool(supports_streaming=True)
    async def async_waits(self, inputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for value in inputs:
                self.events.append(f"got {value}")
                yield value
            self.events.append("end of input")
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise
        finally:
            self.events.append("finally")

    @tool(supports_streaming=True)
    async def impatient(self, inputs: AsyncIterator[Any]) -> AsyncIterator[Dict[str, Any]]:
        """Waits for each input in short slices, cancelling the wait each time it runs out."""
        timeouts = 0
        while True:
            try:
                value = await asyncio.wait_for(inputs.__anext__(), 0.02)
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            except StopAsyncIteration:
                return
            yield {"value": value, "timeouts": timeouts}


@pytest.fixture
def adapter() -> DuplexAdapter:
    return DuplexAdapter()


@pytest.fixture
def dispatcher(adapter: DuplexAdapter) -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(adapter, "duplex-worker")
    yield d
    d.shutdown()


@pytest.fixture
def showcase() -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(ShowcaseAdapter(), "showcase-worker")
    yield d
    d.shutdown()


def open_duplex(
    d: ToolDispatcher,
    name: str,
    source: FeedSource,
    args: Optional[Dict[str, Any]] = None,
    handle: Optional[CallHandle] = None,
    binaries: Optional[Dict[str, bytes]] = None,
) -> Iterator[Tuple[bytes, bool, bool, Dict[str, str]]]:
    return d.open_stream(name, json.dumps(args or {}).encode(), binaries or {}, "s", {}, handle=handle, inputs=source)


def values(chunks: Iterator[Tuple[bytes, bool, bool, Dict[str, str]]]) -> List[Any]:
    return [json.loads(payload) for payload, *_ in chunks]


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


# -- inputs reach the tool -------------------------------------------------------

DESCRIBED = [
    {"label": "L", "type": "int", "value": 1},
    {"label": "L", "type": "dict", "value": {"k": ["é", None]}},
    {"label": "L", "type": "bytes", "value": {"bytes": "00ff"}},
    {"label": "L", "type": "str", "value": "text"},
]


@pytest.mark.parametrize("name, flavour", [("describe_inputs", Inputs), ("async_describe_inputs", AsyncInputs)])
def test_inputs_arrive_decoded_in_order_until_the_end(
    adapter: DuplexAdapter, dispatcher: ToolDispatcher, name: str, flavour: type
) -> None:
    source = FeedSource().send(1, {"k": ["é", None]}).send_raw(b"\x00\xff").send("text").end()
    assert values(open_duplex(dispatcher, name, source, {"label": "L"})) == DESCRIBED
    # A sync iterator for sync tools, an async one for async tools.
    assert adapter.inputs_seen.count == 4
    assert type(adapter.inputs_seen) is flavour
    assert source.closed.is_set()  # the call closed its source when it ended


@pytest.mark.parametrize("name", ["count_inputs", "async_count_inputs"])
def test_a_function_consumes_its_inputs_and_returns_one_final_chunk(dispatcher: ToolDispatcher, name: str) -> None:
    chunks = list(open_duplex(dispatcher, name, FeedSource().send(*range(7)).end()))
    assert [(json.loads(payload), is_final) for payload, _, is_final, _ in chunks] == [(7, True)]


@pytest.mark.parametrize("name", ["describe_inputs", "async_describe_inputs"])
def test_inputs_are_pulled_only_as_the_tool_asks(dispatcher: ToolDispatcher, name: str) -> None:
    source = FeedSource().send(*range(5))
    chunks = open_duplex(dispatcher, name, source)
    for taken in range(1, 6):
        assert json.loads(next(chunks)[0])["value"] == taken - 1
        assert source.pulled == taken
    # All five taken, and no end yet: the tool waits for more.
    next_chunk = InThread(lambda: next(chunks))
    assert source.waiting.wait(WAIT)
    assert next_chunk.thread.is_alive()
    source.send(5).end()
    assert json.loads(next_chunk.join().result[0])["value"] == 5
    with pytest.raises(StopIteration):
        next(chunks)


def test_an_empty_input_stream_ends_at_once(dispatcher: ToolDispatcher) -> None:
    assert values(open_duplex(dispatcher, "describe_inputs", FeedSource().end())) == []
    assert values(open_duplex(dispatcher, "async_count_inputs", FeedSource().end())) == [0]


def test_the_call_ending_early_closes_the_source(adapter: DuplexAdapter, dispatcher: ToolDispatcher) -> None:
    source = FeedSource().send("a", "b", "c")
    assert values(open_duplex(dispatcher, "first_only", source)) == ["a"]
    assert source.closed.is_set()
    assert source.pulled == 1


def test_a_tool_with_kwargs_gets_the_inputs_too(dispatcher: ToolDispatcher) -> None:
    chunks = open_duplex(dispatcher, "any_kwargs", FeedSource().send(1, 2).end(), {"x": 1})
    assert values(chunks) == [{"inputs": [1, 2], "others": {"x": 1}}]


def test_decode_input() -> None:
    assert decode_input(b'{"a":1}', False) == {"a": 1}
    assert decode_input(memoryview(b"[1]"), False) == [1]
    assert decode_input(bytearray(b"\x01"), True) == b"\x01"
    with pytest.raises(ToolFailure) as info:
        decode_input(b"{nope", False, index=3)
    assert (info.value.category, info.value.error_type) == ("validation", "InvalidInput")
    assert "input 3 is not valid JSON" in info.value.message


# -- errors ------------------------------------------------------------------------


def test_a_tool_without_inputs_is_refused(dispatcher: ToolDispatcher) -> None:
    source = FeedSource().send(1)
    with pytest.raises(ToolFailure) as info:
        open_duplex(dispatcher, "no_inputs", source)
    assert (info.value.category, info.value.error_type) == ("validation", "NotDuplexTool")
    assert "'no_inputs' has no 'inputs' parameter" in info.value.message
    assert source.closed.is_set() and source.pulled == 0


def test_inputs_cannot_also_be_an_argument(dispatcher: ToolDispatcher) -> None:
    for args, binaries in (({"inputs": [1]}, None), (None, {"inputs": b"x"})):
        with pytest.raises(ToolFailure) as info:
            open_duplex(dispatcher, "describe_inputs", FeedSource(), args, binaries=binaries)
        assert (info.value.category, info.value.error_type) == ("validation", "InvalidArguments")


def test_unknown_tool_and_bad_arguments_are_refused_eagerly(dispatcher: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        open_duplex(dispatcher, "nope", FeedSource())
    assert info.value.error_type == "UnknownTool"
    with pytest.raises(ToolFailure) as info:
        open_duplex(dispatcher, "describe_inputs", FeedSource(), {"wrong": 1})
    assert info.value.error_type == "InvalidArguments"


@pytest.mark.parametrize("name", ["describe_inputs", "async_describe_inputs"])
def test_an_input_that_is_not_json_fails_the_call(dispatcher: ToolDispatcher, name: str) -> None:
    chunks = open_duplex(dispatcher, name, FeedSource().send(1).send_payload(b"{oops", False).end())
    assert json.loads(next(chunks)[0])["value"] == 1
    with pytest.raises(ToolFailure) as info:
        next(chunks)
    assert (info.value.category, info.value.error_type) == ("validation", "InvalidInput")
    assert "input 1 is not valid JSON" in info.value.message


# -- cancellation --------------------------------------------------------------------


def test_cancel_wakes_a_sync_tool_waiting_for_input(adapter: DuplexAdapter, dispatcher: ToolDispatcher) -> None:
    source = FeedSource().send("a")
    handle = dispatcher.new_call()
    chunks = open_duplex(dispatcher, "waits", source, handle=handle)
    assert json.loads(next(chunks)[0]) == "a"
    waiting = InThread(lambda: next(chunks))
    assert source.waiting.wait(WAIT)  # blocked in next(inputs)
    assert handle.cancel(DEADLINE_EXCEEDED) is True
    assert isinstance(waiting.join().error, ToolCancelled)
    assert waiting.error.reason == DEADLINE_EXCEEDED  # type: ignore[union-attr]
    # The tool saw ToolCancelled (not the end of input), once, and ran its cleanup.
    assert adapter.events == ["got a", "cancelled", "finally"]
    assert source.closed.is_set()
    chunks.close()  # type: ignore[attr-defined]
    assert adapter.events[-1] == "finally" and adapter.events.count("finally") == 1


def test_cancel_wakes_an_async_tool_waiting_for_input(adapter: DuplexAdapter, dispatcher: ToolDispatcher) -> None:
    source = FeedSource().send("a")
    handle = dispatcher.new_call()
    chunks = open_duplex(dispatcher, "async_waits", source, handle=handle)
    assert json.loads(next(chunks)[0]) == "a"
    waiting = InThread(lambda: next(chunks))
    assert source.waiting.wait(WAIT)
    handle.cancel()
    assert isinstance(waiting.join().error, ToolCancelled)
    assert adapter.events == ["got a", "cancelled", "finally"]
    assert source.closed.is_set()
    chunks.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["waits", "async_waits"])
def test_cancel_before_the_first_input_runs_no_tool_code(
    adapter: DuplexAdapter, dispatcher: ToolDispatcher, name: str
) -> None:
    source = FeedSource().send("a")
    handle = dispatcher.new_call()
    chunks = open_duplex(dispatcher, name, source, handle=handle)
    handle.cancel()
    assert source.closed.is_set()  # at once: a cancel closes the inputs
    with pytest.raises(ToolCancelled):
        next(chunks)
    assert adapter.events == [] and source.pulled == 0


def test_the_end_of_input_is_not_a_cancel(adapter: DuplexAdapter, dispatcher: ToolDispatcher) -> None:
    handle = dispatcher.new_call()
    assert values(open_duplex(dispatcher, "waits", FeedSource().send(1).end(), handle=handle)) == [1]
    assert adapter.events == ["got 1", "end of input", "finally"]
    assert handle.cancel() is False


def test_a_cancelled_wait_for_an_input_loses_nothing(dispatcher: ToolDispatcher) -> None:
    source = FeedSource()
    chunks = open_duplex(dispatcher, "impatient", source)
    first = InThread(lambda: next(chunks))
    assert source.waiting.wait(WAIT)
    threading.Event().wait(0.1)  # a few timed-out waits
    source.send("late")
    result = json.loads(first.join().result[0])
    assert result["value"] == "late" and result["timeouts"] > 0
    source.send("next").end()
    assert [v["value"] for v in values(chunks)] == ["next"]
    assert source.pulled == 2


def test_close_ends_the_wrappers_without_a_handle() -> None:
    source = FeedSource().send(1)
    inputs = Inputs(source)
    assert next(inputs) == 1
    waiting = InThread(lambda: next(inputs, "ended"))
    assert source.waiting.wait(WAIT)
    inputs.close()
    assert waiting.join().result == "ended"

    async def drain(inputs: AsyncInputs) -> List[Any]:
        return [value async for value in inputs]

    source = FeedSource().send(1, 2)
    async_inputs = AsyncInputs(source)
    threading.Timer(0.1, async_inputs.close).start()
    assert asyncio.run(drain(async_inputs)) == [1, 2]


def test_the_native_iterator_is_made_by_the_server_only() -> None:
    with pytest.raises(TypeError):
        InputIterator()


# -- showcase duplex tools -----------------------------------------------------------


def _pcm(samples: List[int]) -> bytes:
    data = array.array("h", samples)
    if data.itemsize != 2:  # pragma: no cover
        raise AssertionError("array 'h' is not 16-bit here")
    if sys.byteorder == "big":  # pragma: no cover
        data.byteswap()
    return data.tobytes()


def test_showcase_frame_rms(showcase: ToolDispatcher) -> None:
    frames = [[0, 0, 0, 0], [3, -4], [32767, -32768, 1000], []]
    source = FeedSource()
    for frame in frames:
        source.send_raw(_pcm(frame))
    results = values(open_duplex(showcase, "frame_rms", source.end()))
    assert [(r["frame"], r["samples"]) for r in results] == [(0, 4), (1, 2), (2, 3), (3, 0)]
    for result, frame in zip(results, frames):
        expected = math.sqrt(sum(s * s for s in frame) / len(frame)) if frame else 0.0
        assert result["rms"] == pytest.approx(expected, rel=1e-12)
    assert results[1]["rms"] == pytest.approx(math.sqrt(12.5))


def test_showcase_frame_rms_refuses_json_and_odd_frames(showcase: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        values(open_duplex(showcase, "frame_rms", FeedSource().send([1, 2]).end()))
    assert info.value.error_type == "TypeError"
    with pytest.raises(ToolFailure) as info:
        values(open_duplex(showcase, "frame_rms", FeedSource().send_raw(b"\x01\x02\x03").end()))
    assert info.value.error_type == "ValueError"
    with pytest.raises(ToolFailure) as info:
        values(open_duplex(showcase, "frame_rms", FeedSource().end(), {"sample_width": 3}))
    assert "unsupported sample_width 3" in info.value.message


@pytest.mark.parametrize("name", ["echo_inputs", "async_echo_inputs"])
def test_showcase_echo_inputs(showcase: ToolDispatcher, name: str, tmp_path: Any) -> None:
    marker = tmp_path / "marker"
    inputs = [1, "two", {"three": [3]}, None]
    chunks = open_duplex(showcase, name, FeedSource().send(*inputs).end(), {"marker_path": str(marker)})
    assert values(chunks) == [{"index": i, "input": value} for i, value in enumerate(inputs)]
    assert marker.read_text() == "finished"


def test_showcase_sum_inputs(showcase: ToolDispatcher) -> None:
    source = FeedSource().send(1, 2.5, -3)
    chunks = open_duplex(showcase, "sum_inputs", source)
    result = InThread(lambda: next(chunks))
    assert source.waiting.wait(WAIT)
    assert result.thread.is_alive()  # no output before the end of input
    source.send(10).end()
    payload, _, is_final, _ = result.join().result
    assert (json.loads(payload), is_final) == ({"sum": 10.5}, True)
