from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from snakepit_bridge import BaseAdapter, StreamChunk, ToolFailure, tool
from snakepit_bridge.adapters.showcase import ShowcaseAdapter
from snakepit_bridge.dispatcher import ToolDispatcher

WORKERS = 8


@dataclass
class Point:
    x: int
    y: int


class FakeArray:
    def tolist(self) -> List[int]:
        return [1, 2, 3]


class SampleAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.events: List[str] = []
        self.barrier = threading.Barrier(WORKERS, timeout=10)
        self.async_waiting = 0
        self.async_ready: Any = None

    @tool
    def types(self) -> Dict[str, Any]:
        return {
            "int": 1,
            "float": 1.5,
            "str": "é",
            "list": [1, "a"],
            "none": None,
            "bool": True,
            "tuple": (1, 2),
            "set": {7},
            "point": Point(1, 2),
            "array": FakeArray(),
        }

    @tool
    def raw(self) -> bytearray:
        return bytearray(b"\x00\xffraw")

    @tool
    def blob_info(self, blob: bytes, label: str = "") -> Dict[str, Any]:
        return {"type": type(blob).__name__, "size": len(blob), "label": label}

    @tool
    def unencodable(self) -> Any:
        return object()

    @tool
    def nan(self) -> float:
        return float("nan")

    @tool
    def with_metadata(self) -> StreamChunk:
        return StreamChunk(data={"ok": True}, metadata={"n": 1})  # type: ignore[dict-item]

    @tool
    def raises_failure(self) -> None:
        raise ToolFailure("validation", "Custom", "custom failure")

    def _session_id(self) -> str:
        context = self.session_context
        assert context is not None
        return context.session_id

    @tool
    def sync_session(self) -> str:
        self.barrier.wait()  # all calls are in flight at once
        return self._session_id()

    @tool
    async def async_session(self) -> str:
        if self.async_ready is None:
            self.async_ready = asyncio.Event()
        self.async_waiting += 1
        if self.async_waiting == WORKERS:
            self.async_ready.set()
        await self.async_ready.wait()
        return self._session_id()

    @tool
    def returns_awaitable(self, value: int):
        async def later():
            return {"value": value, "session": self._session_id()}

        return later()

    @tool
    async def async_fails(self):
        raise KeyError("missing")

    @tool(supports_streaming=True)
    def sync_gen(self, count: int = 3, marker: str = "") -> Iterator[Dict[str, Any]]:
        try:
            for i in range(count):
                yield {"i": i, "session": self._session_id()}
        finally:
            self.events.append(f"sync closed {marker}")
            if marker:
                Path(marker).write_text("closed")

    @tool(supports_streaming=True)
    async def async_gen(self, count: int = 3, forever: bool = False):
        try:
            i = 0
            while forever or i < count:
                await asyncio.sleep(0)
                yield {"i": i, "session": self._session_id()}
                i += 1
        finally:
            self.events.append(f"async closed {self._session_id()}")

    @tool(supports_streaming=True)
    def lifted(self):
        yield {"a": 1, "is_final": False}
        yield {"a": 2, "is_final": True, "_metadata": {"k": "v"}}
        yield {"a": 3, "_metadata": {}}
        yield b"bytes chunk"

    @tool(supports_streaming=True)
    def ill_typed(self, key: str, value: Any):
        try:
            yield {"a": 1}
            yield {"a": 2, key: value}
        finally:
            self.events.append("ill_typed closed")

    @tool(supports_streaming=True)
    def plain_value(self) -> Dict[str, int]:
        return {"only": 1}

    @tool(supports_streaming=True)
    def plain_list(self) -> List[int]:
        return [1, 2]

    @tool(supports_streaming=True)
    async def async_list(self) -> List[int]:
        return [5, 6]


class FallbackAdapter(BaseAdapter):
    @tool
    def known(self) -> str:
        return "known"

    def execute_tool(self, tool_name: str, arguments: Dict[str, Any], context: Any) -> Any:
        if tool_name == "stream_me":
            return iter([{"n": 1}, {"n": 2}])
        shown = {k: f"bytes:{len(v)}" if isinstance(v, bytes) else v for k, v in arguments.items()}
        return {"tool": tool_name, "arguments": shown, "session": context.session_id}


class AsyncFallbackAdapter(BaseAdapter):
    async def execute_tool(self, tool_name: str, arguments: Dict[str, Any], context: Any) -> Any:
        await asyncio.sleep(0)
        return {"tool": tool_name, "session": context.session_id}


@pytest.fixture
def adapter() -> SampleAdapter:
    return SampleAdapter()


@pytest.fixture
def dispatcher(adapter: SampleAdapter) -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(adapter, "worker-1")
    yield d
    d.shutdown()


@pytest.fixture
def showcase() -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(ShowcaseAdapter(), "worker-s")
    yield d
    d.shutdown()


def call(
    d: ToolDispatcher,
    name: str,
    args: Any = None,
    binaries: Any = None,
    session: str = "session-1",
    metadata: Any = None,
) -> Tuple[bytes, bool, Dict[str, str]]:
    return d.call(name, json.dumps(args or {}).encode(), binaries or {}, session, metadata or {})


def call_json(d: ToolDispatcher, name: str, args: Any = None, **kw: Any) -> Any:
    payload, is_raw, _ = call(d, name, args, **kw)
    assert not is_raw
    return json.loads(payload)


def stream(
    d: ToolDispatcher, name: str, args: Any = None, binaries: Any = None, session: str = "session-1"
) -> Iterator[Tuple[bytes, bool, bool, Dict[str, str]]]:
    return d.open_stream(name, json.dumps(args or {}).encode(), binaries or {}, session, {})


def decoded(chunks: Any) -> List[Tuple[Any, bool]]:
    return [(json.loads(p) if not raw else p, final) for p, raw, final, _ in chunks]


# -- describe ---------------------------------------------------------------


def test_describe_json(showcase: ToolDispatcher) -> None:
    doc = json.loads(showcase.describe_json().decode("utf-8"))
    assert doc["adapter"] == "snakepit_bridge.adapters.showcase.adapter.ShowcaseAdapter"
    assert doc["worker_id"] == "worker-s"
    tools = {t["name"]: t for t in doc["tools"]}
    assert [t["name"] for t in doc["tools"]] == sorted(tools)
    assert tools["stream_progress"]["supports_streaming"] is True
    assert tools["add"]["supports_streaming"] is False
    assert tools["add"]["parameters"][0] == {"name": "a", "type": "any", "required": True, "default_json": ""}
    steps = tools["stream_progress"]["parameters"][0]
    assert steps == {"name": "steps", "type": "int", "required": False, "default_json": "5"}
    assert set(tools["ping"]) == {"name", "description", "supports_streaming", "parameters"}


# -- unary calls -------------------------------------------------------------


def test_call_success_compact_json(showcase: ToolDispatcher) -> None:
    assert call(showcase, "add", {"a": 1, "b": 2}) == (b"3", False, {})
    assert call_json(showcase, "add", {"a": [1], "b": [2]}) == [1, 2]
    payload, _, _ = call(showcase, "echo", {"x": {"k": "ü"}, "y": [1, 2]})
    assert payload == '{"x":{"k":"ü"},"y":[1,2]}'.encode()
    pong = call_json(showcase, "ping")
    assert pong["message"] == "pong" and isinstance(pong["timestamp"], float)


def test_echo_preserves_types(showcase: ToolDispatcher) -> None:
    args = {"i": 1, "f": 2.5, "s": "x", "b": False, "n": None, "l": [1, [2]], "d": {"a": {}}}
    assert call_json(showcase, "echo", args) == args


def test_empty_arguments_mean_no_arguments(showcase: ToolDispatcher) -> None:
    payload, is_raw, _ = showcase.call("echo", b"", {}, "", {})
    assert (payload, is_raw) == (b"{}", False)


def test_json_types_and_default_hook(dispatcher: ToolDispatcher) -> None:
    assert call_json(dispatcher, "types") == {
        "int": 1,
        "float": 1.5,
        "str": "é",
        "list": [1, "a"],
        "none": None,
        "bool": True,
        "tuple": [1, 2],
        "set": [7],
        "point": {"x": 1, "y": 2},
        "array": [1, 2, 3],
    }


def test_bytes_result_is_raw(dispatcher: ToolDispatcher, showcase: ToolDispatcher) -> None:
    assert call(dispatcher, "raw") == (b"\x00\xffraw", True, {})
    assert call(showcase, "process_binary", {"operation": "reverse"}, {"data": b"abc"}) == (b"cba", True, {})
    assert call(showcase, "process_binary", {"operation": "upper"}, {"data": b"abc"}) == (b"ABC", True, {})


def test_binaries_reach_tool_as_bytes(dispatcher: ToolDispatcher, showcase: ToolDispatcher) -> None:
    result = call_json(dispatcher, "blob_info", {"label": "L"}, binaries={"blob": memoryview(b"\x01\x02")})
    assert result == {"type": "bytes", "size": 2, "label": "L"}
    checksum = call_json(showcase, "process_binary", binaries={"data": bytearray(b"hello")})
    assert checksum == {"sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "size": 5}


def test_stream_chunk_result_carries_metadata(dispatcher: ToolDispatcher) -> None:
    assert call(dispatcher, "with_metadata") == (b'{"ok":true}', False, {"n": "1"})


def test_unknown_tool(showcase: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        call(showcase, "nope")
    failure = info.value
    assert (failure.category, failure.error_type) == ("validation", "UnknownTool")
    assert failure.message.startswith(
        "unknown tool 'nope' (available: add, async_add, async_echo_inputs, async_stream, compute, echo,"
    )
    assert str(failure) == failure.message


@pytest.mark.parametrize(
    "raw, binaries, fragment",
    [
        (b'{"a": 1}', {}, "missing a required argument: 'b'"),
        (b'{"a": 1, "b": 2, "c": 3}', {}, "unexpected keyword argument 'c'"),
        (b"[1, 2]", {}, "expected a JSON object, got list"),
        (b"{not json", {}, "not valid JSON"),
        (b"\xff\xfe{", {}, "not valid JSON"),
        (b'{"a": 1}', {"a": b"x", "b": b"y"}, "argument 'a' given both as JSON and as binary"),
    ],
)
def test_bad_arguments(showcase: ToolDispatcher, raw: bytes, binaries: Dict[str, bytes], fragment: str) -> None:
    with pytest.raises(ToolFailure) as info:
        showcase.call("add", raw, binaries, "s", {})
    assert (info.value.category, info.value.error_type) == ("validation", "InvalidArguments")
    assert info.value.message.startswith("invalid arguments for tool 'add': ")
    assert fragment in info.value.message
    assert info.value.traceback == ""


def test_python_error_with_traceback(showcase: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        call(showcase, "error_demo", {"error_type": "KeyError", "message": "gone"})
    failure = info.value
    assert (failure.category, failure.error_type, failure.message) == ("python", "KeyError", "'gone'")
    assert "Traceback (most recent call last)" in failure.traceback
    assert "error_demo" in failure.traceback
    with pytest.raises(ToolFailure) as info:
        call(showcase, "error_demo")
    assert (info.value.error_type, info.value.message) == ("ValueError", "This is a demo error")


def test_tool_raised_tool_failure_passes_through(dispatcher: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        call(dispatcher, "raises_failure")
    assert (info.value.category, info.value.error_type, info.value.message) == (
        "validation",
        "Custom",
        "custom failure",
    )


@pytest.mark.parametrize("tool_name", ["unencodable", "nan"])
def test_serialization_error(dispatcher: ToolDispatcher, tool_name: str) -> None:
    with pytest.raises(ToolFailure) as info:
        call(dispatcher, tool_name)
    assert (info.value.category, info.value.error_type) == ("python", "SerializationError")


def test_unary_call_of_streaming_tool_rejected(showcase: ToolDispatcher) -> None:
    for name in ("stream_numbers", "async_stream"):
        with pytest.raises(ToolFailure) as info:
            call(showcase, name)
        assert info.value.category == "validation"
        assert "execute_stream" in info.value.message


def test_async_tools(dispatcher: ToolDispatcher, showcase: ToolDispatcher) -> None:
    assert call_json(showcase, "async_add", {"a": 2, "b": 3}) == 5
    assert call_json(dispatcher, "returns_awaitable", {"value": 4}, session="s-aw") == {"value": 4, "session": "s-aw"}
    with pytest.raises(ToolFailure) as info:
        call(dispatcher, "async_fails")
    assert (info.value.category, info.value.error_type) == ("python", "KeyError")
    assert "async_fails" in info.value.traceback


def test_session_context_and_metadata(showcase: ToolDispatcher) -> None:
    result = call_json(showcase, "session_info", session="abc", metadata={"trace": "t1"})
    assert result == {"session_id": "abc", "worker_id": "worker-s", "metadata": {"trace": "t1"}, "time_remaining": None}


def test_execute_tool_fallback() -> None:
    d = ToolDispatcher(FallbackAdapter(), "w")
    try:
        assert call_json(d, "known") == "known"
        result = call_json(d, "dynamic", {"x": 1}, binaries={"b": b"zz"}, session="fs")
        assert result == {"tool": "dynamic", "arguments": {"x": 1, "b": "bytes:2"}, "session": "fs"}
        assert decoded(stream(d, "stream_me")) == [({"n": 1}, False), ({"n": 2}, False)]
    finally:
        d.shutdown()


def test_async_execute_tool_fallback() -> None:
    d = ToolDispatcher(AsyncFallbackAdapter(), "w")
    try:
        assert call_json(d, "anything", session="as") == {"tool": "anything", "session": "as"}
    finally:
        d.shutdown()


def test_concurrent_sync_calls_see_own_session(dispatcher: ToolDispatcher) -> None:
    _assert_concurrent_sessions(dispatcher, "sync_session")


def test_concurrent_async_calls_see_own_session(dispatcher: ToolDispatcher) -> None:
    _assert_concurrent_sessions(dispatcher, "async_session")


def _assert_concurrent_sessions(d: ToolDispatcher, tool_name: str) -> None:
    results: Dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = call_json(d, tool_name, session=f"session-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: f"session-{i}" for i in range(WORKERS)}


# -- streams -----------------------------------------------------------------


def test_sync_generator_stream(showcase: ToolDispatcher) -> None:
    assert decoded(stream(showcase, "stream_numbers", {"count": 3})) == [
        ({"number": 0}, False),
        ({"number": 1}, False),
        ({"number": 2}, False),
    ]


def test_stream_sees_session_context(dispatcher: ToolDispatcher) -> None:
    chunks = decoded(stream(dispatcher, "sync_gen", {"count": 2}, session="gen-s"))
    assert chunks == [({"i": 0, "session": "gen-s"}, False), ({"i": 1, "session": "gen-s"}, False)]
    chunks = decoded(stream(dispatcher, "async_gen", {"count": 2}, session="agen-s"))
    assert chunks == [({"i": 0, "session": "agen-s"}, False), ({"i": 1, "session": "agen-s"}, False)]


def test_async_generator_stream(showcase: ToolDispatcher) -> None:
    assert decoded(stream(showcase, "async_stream", {"count": 3, "delay_ms": 1})) == [
        ({"index": 0}, False),
        ({"index": 1}, False),
        ({"index": 2}, False),
    ]


def test_stream_chunk_objects(showcase: ToolDispatcher) -> None:
    chunks = list(stream(showcase, "stream_chunks", {"count": 2}))
    assert chunks == [
        (b'{"index":0}', False, False, {"source": "showcase"}),
        (b'{"index":1}', False, True, {"source": "showcase"}),
    ]


def test_reserved_keys_are_lifted(dispatcher: ToolDispatcher) -> None:
    chunks = list(stream(dispatcher, "lifted"))
    assert chunks == [
        (b'{"a":1}', False, False, {}),
        (b'{"a":2}', False, True, {"k": "v"}),
        (b'{"a":3}', False, False, {}),
        (b"bytes chunk", True, False, {}),
    ]


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("is_final", "yes", '"is_final"'),
        ("is_final", 1, '"is_final"'),
        ("is_final", None, '"is_final"'),
        ("_metadata", "text", '"_metadata"'),
        ("_metadata", ["k", "v"], '"_metadata"'),
        ("_metadata", {"k": 1}, "'k': 1"),
    ],
)
def test_ill_typed_reserved_keys_fail_the_stream(
    dispatcher: ToolDispatcher, adapter: Any, key: str, value: Any, named: str
) -> None:
    chunks = stream(dispatcher, "ill_typed", {"key": key, "value": value})
    assert next(chunks) == (b'{"a":1}', False, False, {})
    with pytest.raises(ToolFailure) as info:
        next(chunks)
    assert (info.value.category, info.value.error_type) == ("python", "InvalidChunk")
    assert named in info.value.message
    assert "ill_typed closed" in adapter.events


def test_stream_progress_marks_last_chunk_final(showcase: ToolDispatcher) -> None:
    chunks = decoded(stream(showcase, "stream_progress", {"steps": 3, "delay_ms": 1}))
    assert [final for _, final in chunks] == [False, False, True]
    assert chunks[0][0] == {"step": 1, "total": 3, "progress": 1 / 3 * 100, "message": "Processing step 1/3"}


def test_stream_progress_spaces_chunks_in_time(showcase: ToolDispatcher) -> None:
    chunks = stream(showcase, "stream_progress", {"steps": 3, "delay_ms": 30})
    next(chunks)
    started = time.monotonic()
    rest = list(chunks)
    assert len(rest) == 2
    assert time.monotonic() - started >= 0.055


def test_non_generator_streaming_results(dispatcher: ToolDispatcher) -> None:
    assert decoded(stream(dispatcher, "plain_value")) == [({"only": 1}, True)]
    assert decoded(stream(dispatcher, "plain_list")) == [(1, False), (2, False)]
    assert decoded(stream(dispatcher, "async_list")) == [(5, False), (6, False)]


def test_open_stream_validates_eagerly(showcase: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as info:
        stream(showcase, "nope")
    assert info.value.error_type == "UnknownTool"
    with pytest.raises(ToolFailure) as info:
        showcase.open_stream("stream_numbers", b'{"count": 1, "bogus": 2}', {}, "s", {})
    assert info.value.error_type == "InvalidArguments"


def test_close_runs_sync_generator_finally(showcase: ToolDispatcher, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    chunks = stream(showcase, "infinite_stream", {"delay_ms": 1, "marker_path": str(marker)})
    assert json.loads(next(chunks)[0])["tick"] == 0
    assert json.loads(next(chunks)[0])["tick"] == 1
    assert not marker.exists()
    chunks.close()  # type: ignore[attr-defined]
    assert marker.read_text() == "closed"


def test_close_runs_async_generator_finally(adapter: SampleAdapter, dispatcher: ToolDispatcher) -> None:
    chunks = stream(dispatcher, "async_gen", {"forever": True}, session="cancel-me")
    next(chunks)
    next(chunks)
    assert adapter.events == []
    chunks.close()  # type: ignore[attr-defined]
    assert adapter.events == ["async closed cancel-me"]


def test_close_before_first_next_is_harmless(adapter: SampleAdapter, dispatcher: ToolDispatcher) -> None:
    stream(dispatcher, "sync_gen").close()  # type: ignore[attr-defined]
    stream(dispatcher, "async_gen").close()  # type: ignore[attr-defined]
    assert adapter.events == []


def test_error_mid_stream_after_chunks(showcase: ToolDispatcher) -> None:
    chunks = stream(showcase, "fail_midstream", {"after": 2})
    assert json.loads(next(chunks)[0]) == {"i": 0}
    assert json.loads(next(chunks)[0]) == {"i": 1}
    with pytest.raises(ToolFailure) as info:
        next(chunks)
    failure = info.value
    assert (failure.category, failure.error_type, failure.message) == ("python", "RuntimeError", "boom after 2")
    assert "fail_midstream" in failure.traceback
    with pytest.raises(StopIteration):
        next(chunks)


def test_serialization_error_mid_stream(dispatcher: ToolDispatcher) -> None:
    class Bad(BaseAdapter):
        @tool(supports_streaming=True)
        def gen(self):
            yield {"ok": 1}
            yield {"bad": object()}

    d = ToolDispatcher(Bad(), "w")
    chunks = stream(d, "gen")
    assert next(chunks)[0] == b'{"ok":1}'
    with pytest.raises(ToolFailure) as info:
        next(chunks)
    assert info.value.error_type == "SerializationError"


def test_concurrent_streams_from_threads(dispatcher: ToolDispatcher) -> None:
    results: Dict[int, Any] = {}

    def run(i: int) -> None:
        name = "async_gen" if i % 2 else "sync_gen"
        results[i] = [c["session"] for c, _ in decoded(stream(dispatcher, name, {"count": 5}, session=f"s{i}"))]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == {i: [f"s{i}"] * 5 for i in range(WORKERS)}


def test_stream_driven_from_different_threads(adapter: SampleAdapter, dispatcher: ToolDispatcher) -> None:
    for name in ("sync_gen", "async_gen"):
        chunks = stream(dispatcher, name, {"count": 4}, session=f"threads-{name}")
        seen: List[Any] = []

        def step() -> None:
            seen.append(json.loads(next(chunks)[0]))  # noqa: B023 - runs within this iteration

        for _ in range(3):
            t = threading.Thread(target=step)
            t.start()
            t.join(timeout=10)
        closer = threading.Thread(target=chunks.close)  # type: ignore[attr-defined]
        closer.start()
        closer.join(timeout=10)
        assert [c["i"] for c in seen] == [0, 1, 2]
        assert {c["session"] for c in seen} == {f"threads-{name}"}
    assert adapter.events == ["sync closed ", "async closed threads-async_gen"]


def test_keyword_check_matches_signature_bind() -> None:
    import inspect

    from snakepit_bridge.tools import KeywordCheck

    def plain(a: int, b: int = 2, *, c: int) -> None: ...

    def open_ended(a: int, **rest: Any) -> None: ...

    def positional(a: int, /, b: int = 0) -> None: ...

    def variadic(*values: int, scale: int = 1) -> None: ...

    cases: List[Tuple[Callable[..., None], Dict[str, int]]] = [
        (plain, {"a": 1, "c": 3}),
        (plain, {"a": 1}),
        (plain, {"b": 1}),
        (plain, {"a": 1, "c": 3, "d": 4}),
        (open_ended, {"a": 1, "anything": 2}),
        (open_ended, {"anything": 2}),
        (positional, {"b": 1}),
        (positional, {"a": 1}),
        (variadic, {"scale": 2}),
        (variadic, {"other": 2}),
    ]
    for func, arguments in cases:
        signature = inspect.signature(func)
        try:
            signature.bind(**arguments)
            binds = True
        except TypeError:
            binds = False
        problem = KeywordCheck(signature).error(arguments)
        assert (problem is None) == binds, (func.__name__, arguments, problem)
    assert KeywordCheck(inspect.signature(plain)).error({"b": 1}) == "missing a required argument: 'a', 'c'"
