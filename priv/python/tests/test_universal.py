"""The universal call's operations and the ref registry, through the dispatcher."""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, AsyncIterator, Iterator

import pytest

from snakepit_bridge import BaseAdapter
from snakepit_bridge.dispatcher import ToolDispatcher
from snakepit_bridge.errors import ToolFailure
from snakepit_bridge.refs import RefRegistry
from snakepit_bridge.universal import Policy, Universal, stream_type


class EmptyAdapter(BaseAdapter):
    pass


@pytest.fixture
def dispatcher() -> Iterator[ToolDispatcher]:
    d = ToolDispatcher(EmptyAdapter(), "w-test", Universal(Policy(max_refs=50)))
    yield d
    d.shutdown()


def op(d: ToolDispatcher, name: str, session_id: str = "", **arguments: Any) -> Any:
    payload, is_raw, _ = d.call(name, json.dumps(arguments).encode(), {}, session_id, {})
    return payload if is_raw else json.loads(payload)


def call(d: ToolDispatcher, module: str, path: str, *args: Any, **extra: Any) -> Any:
    answer = op(d, "snakepit.call", scope="s", target={"module": module}, path=path, args=list(args), **extra)
    return answer if isinstance(answer, bytes) else answer["value"]


def gen(n: int) -> Iterator[int]:
    yield from range(n)


async def agen(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@dataclasses.dataclass
class Pair:
    a: int
    b: Any


class Opaque:
    def __repr__(self) -> str:
        return "x" * 1000


def two_objects_and_nan() -> Any:
    return [Opaque(), Opaque(), float("nan")]


def test_stream_detection_follows_the_seed() -> None:
    assert stream_type(gen(1)) == "generator"
    assert stream_type(agen(1)) == "async_generator"
    assert stream_type(iter([1])) == "iterator"
    assert stream_type(map(str, [1])) == "iterator"
    for value in ["ab", b"ab", [1], (1,), {"a": 1}, {1}, frozenset([1]), range(3), 5, None]:
        assert stream_type(value) is None, value
    # A file iterates, but is a context manager: a ref, not a stream.
    assert stream_type(io.StringIO("a\nb")) is None


def test_results_by_kind(dispatcher: ToolDispatcher) -> None:
    u = dispatcher.universal
    from snakepit_bridge.universal import _Wiring

    wiring = _Wiring("s", "sess")
    wired = u.to_wire(
        {"t": (1, 2), "set": {3}, 1: "int key", "b": b"\x00", "p": Pair(1, gen(2)), "o": Opaque()}, wiring
    )
    assert wired["t"] == [1, 2] and wired["set"] == [3] and wired[1] == "int key"
    assert wired["b"] == {"__type__": "bytes", "__schema__": 1, "base64": "AA=="}
    assert wired["p"]["a"] == 1 and wired["p"]["b"]["__type__"] == "stream_ref"
    assert wired["p"]["b"]["session_id"] == "sess"
    ref = wired["o"]
    assert ref["__type__"] == "ref" and ref["type_name"] == "Opaque" and len(ref["repr"]) == 200
    assert wiring.tagged == 3
    # Keys JSON cannot carry keep the dict in Python.
    assert u.to_wire({(1, 2): 3}, wiring)["__type__"] == "ref"
    with pytest.raises(ToolFailure) as caught:
        cyclic: list[Any] = []
        cyclic.append(cyclic)
        u.to_wire(cyclic, wiring)
    assert caught.value.error_type == "TooDeep"


def test_call_attr_and_refs_passed_back(dispatcher: ToolDispatcher) -> None:
    assert call(dispatcher, "math", "sqrt", 16) == 4.0
    assert call(dispatcher, "math", "pi", action="attr") == pytest.approx(3.14159, abs=1e-5)
    assert call(dispatcher, "builtins", "bytes", 2) == b"\x00\x00"
    rng = call(dispatcher, "builtins", "range", 5)
    assert rng["__type__"] == "ref"
    listed = call(dispatcher, "builtins", "list", {"__snakepit_ref__": rng["id"]}, has_refs=True)
    assert listed == [0, 1, 2, 3, 4]
    # Without has_refs the dict is data.
    assert call(dispatcher, "builtins", "len", {"__snakepit_ref__": rng["id"]}) == 1
    assert op(dispatcher, "snakepit.len", ref=rng["id"]) == {"len": 5}
    with pytest.raises(ToolFailure) as caught:
        call(dispatcher, "os", "path..join")
    assert caught.value.error_type == "InvalidArguments"
    with pytest.raises(ToolFailure) as caught:
        op(dispatcher, "snakepit.call", scope="s", target={"module": "math"}, path="sqrt", args="x")
    assert caught.value.error_type == "InvalidArguments"


def test_fetch_keeps_unconsumed_items(dispatcher: ToolDispatcher) -> None:
    counter = call(dispatcher, "itertools", "count", 1)["id"]
    first = op(dispatcher, "snakepit.next", ref=counter, max=10)
    assert first["items"] == list(range(1, 11)) and first["done"] is False
    assert first["position"] == 0
    # The consumer took 3 of them, then stopped: the 7 others come again.
    # Positions are absolute, so confirming twice changes nothing.
    for _ in range(2):
        assert op(dispatcher, "snakepit.next", ref=counter, position=3, max=0)["items"] == []
    batch = op(dispatcher, "snakepit.next", ref=counter, max=5)
    assert (batch["position"], batch["items"]) == (3, [4, 5, 6, 7, 8])
    batch = op(dispatcher, "snakepit.next", ref=counter, position=8, max=3)
    assert (batch["position"], batch["items"]) == (8, [9, 10, 11])


def test_exhaustion_frees_the_iterator(dispatcher: ToolDispatcher) -> None:
    registry = dispatcher.universal.registry
    before = len(registry)
    g = dispatcher.universal.to_wire(gen(3), _wiring())["id"]
    batch = op(dispatcher, "snakepit.next", ref=g, max=10)
    assert batch == {"done": True, "tagged": 0, "position": 0, "items": [0, 1, 2]}
    assert len(registry) == before + 1
    assert op(dispatcher, "snakepit.next", ref=g, position=3, max=0)["done"] is True
    assert len(registry) == before
    assert op(dispatcher, "snakepit.next", ref=g, max=10)["items"] == []


def test_an_exception_comes_after_the_items_before_it(dispatcher: ToolDispatcher) -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise KeyError("boom")

    g = dispatcher.universal.to_wire(failing(), _wiring())["id"]
    assert op(dispatcher, "snakepit.next", ref=g, max=10)["items"] == [1, 2]
    # A confirmation does not report it: nobody would read it.
    assert op(dispatcher, "snakepit.next", ref=g, position=2, max=0)["items"] == []
    with pytest.raises(ToolFailure) as caught:
        op(dispatcher, "snakepit.next", ref=g, position=2, max=10)
    assert caught.value.error_type == "KeyError" and "boom" in caught.value.traceback
    with pytest.raises(ToolFailure) as caught:
        op(dispatcher, "snakepit.next", ref=g, max=10)
    assert caught.value.error_type == "RefReleased"


def test_async_generators_and_fresh_iterators(dispatcher: ToolDispatcher) -> None:
    a = dispatcher.universal.to_wire(agen(4), _wiring())["id"]
    assert op(dispatcher, "snakepit.next", ref=a, max=2)["items"] == [0, 1]
    assert op(dispatcher, "snakepit.next", ref=a, position=2, max=5)["items"] == [2, 3]
    rng = call(dispatcher, "builtins", "range", 4)["id"]
    for _ in range(2):
        batch = op(dispatcher, "snakepit.next", ref=rng, fresh=True, max=10)
        assert batch["items"] == [0, 1, 2, 3] and batch["iterator"] != rng
    with pytest.raises(ToolFailure) as caught:
        op(dispatcher, "snakepit.next", ref=rng, max=1)
    assert caught.value.error_type == "NotAnIterator"
    # A file iterates itself: every enumeration reads on where the last stopped.
    lines = dispatcher.universal.to_wire(io.StringIO("a\nb\nc\n"), _wiring())
    assert lines["__type__"] == "ref"
    batch = op(dispatcher, "snakepit.next", ref=lines["id"], fresh=True, max=1)
    assert (batch["iterator"], batch["items"]) == (lines["id"], ["a\n"])
    batch = op(dispatcher, "snakepit.next", ref=lines["id"], fresh=True, position=1, max=10)
    assert batch["items"] == ["b\n", "c\n"] and batch["done"] is True
    op(dispatcher, "snakepit.next", ref=lines["id"], position=3, max=0)
    # Exhausted, the file stays a ref.
    assert op(dispatcher, "snakepit.len", ref=lines["id"]) == {"len": None}


def test_batches_stop_at_the_byte_budget(dispatcher: ToolDispatcher) -> None:
    big = dispatcher.universal.to_wire(("x" * 1000 for _ in range(100)), _wiring())["id"]
    batch = op(dispatcher, "snakepit.next", ref=big, max=100, max_bytes=5000)
    assert 4 <= len(batch["items"]) <= 6


def test_registry_caps_scopes_expires_and_remembers() -> None:
    registry = RefRegistry(max_per_scope=2, ttl=10.0)
    a = registry.add(object(), "s1")
    registry.add(object(), "s1")
    with pytest.raises(ToolFailure) as caught:
        registry.add(object(), "s1")
    assert caught.value.error_type == "TooManyRefs"
    registry.add(object(), "s2")
    assert registry.release_scope("s1") == 2
    with pytest.raises(ToolFailure) as caught:
        registry.get(a.id)
    assert caught.value.error_type == "RefReleased"
    with pytest.raises(ToolFailure) as caught:
        registry.get("never-made")
    assert caught.value.error_type == "RefLost"
    c = registry.add(object(), "s2")
    assert registry.sweep(now=c.last_used + 5) == 0
    assert registry.sweep(now=c.last_used + 11) == 2
    assert len(registry) == 0
    assert "expired" in (registry.gone_reason(c.id) or "")
    registry.close()


def test_policy(dispatcher: ToolDispatcher) -> None:
    env = {"SNAKEPIT_UNIVERSAL": '{"allow_call":["math","os"],"max_refs":3,"ref_ttl_ms":500,"max_plain_bytes":10}'}
    policy = Policy.from_environment(env)
    assert policy.allows("math") and policy.allows("os.path") and not policy.allows("mathx")
    assert (policy.max_refs, policy.ref_ttl, policy.max_plain_bytes) == (3, 0.5, 10)
    assert Policy.from_environment({}).allow_call is True
    with pytest.raises(ValueError):
        Policy.from_environment({"SNAKEPIT_UNIVERSAL": '{"allow_call": "yes"}'})
    off = ToolDispatcher(EmptyAdapter(), "w-off", Universal(Policy(allow_call=False)))
    try:
        with pytest.raises(ToolFailure) as caught:
            call(off, "math", "sqrt", 4)
        assert caught.value.error_type == "CallNotAllowed"
    finally:
        off.shutdown()


def test_reserved_names_are_operations(dispatcher: ToolDispatcher) -> None:
    with pytest.raises(ToolFailure) as caught:
        op(dispatcher, "snakepit.nope")
    assert caught.value.error_type == "UnknownTool"
    with pytest.raises(ToolFailure) as caught:
        dispatcher.open_stream("snakepit.next", b"{}", {}, "", {})
    assert caught.value.error_type == "NotStreaming"


class Model:
    """Shaped like a pydantic model: its plain form is ``model_dump()``."""

    def model_dump(self) -> Any:
        return {"name": "m", "tags": ("a", "b")}


def test_pydantic_models_come_back_as_their_dump(dispatcher: ToolDispatcher) -> None:
    u = dispatcher.universal
    assert u.to_wire(Model(), _wiring()) == {"name": "m", "tags": ["a", "b"]}
    # The class itself is an object, not a model.
    assert u.to_wire(Model, _wiring())["__type__"] == "ref"


def test_plain_forms_past_the_limit_are_refs() -> None:
    u = Universal(Policy(max_plain_bytes=20))
    try:
        # 29 bytes of JSON: past the limit.
        assert u.to_wire(Model(), _wiring())["__type__"] == "ref"
        assert u.to_wire(Pair(1, 2), _wiring()) == {"a": 1, "b": 2}
        assert u.to_wire(Pair(1, "y" * 100), _wiring())["__type__"] == "ref"
    finally:
        u.close()


def _wiring() -> Any:
    from snakepit_bridge.universal import _Wiring

    return _Wiring("s", "")


def test_refs_inside_unconsumed_items_go_with_their_iterator(dispatcher: ToolDispatcher) -> None:
    registry = dispatcher.universal.registry
    before = len(registry)
    g = dispatcher.universal.to_wire((Opaque() for _ in range(5)), _wiring())["id"]
    batch = op(dispatcher, "snakepit.next", ref=g, max=5)
    assert batch["tagged"] == 5 and len(registry) == before + 6
    # Two were consumed (their refs are the consumer's now), three were not.
    op(dispatcher, "snakepit.next", ref=g, position=2, max=0)
    assert op(dispatcher, "snakepit.release", refs=[g]) == {"released": 4}
    assert len(registry) == before + 2


def test_a_call_that_fails_midway_keeps_no_refs(dispatcher: ToolDispatcher) -> None:
    registry = dispatcher.universal.registry
    before = len(registry)
    with pytest.raises(ToolFailure) as caught:
        # A list of two objects and NaN, which JSON cannot carry: the refs
        # made for the two objects are released with the failure.
        dispatcher.universal.run(
            "snakepit.call",
            {"scope": "s", "target": {"module": __name__}, "path": "two_objects_and_nan"},
            "",
            lambda awaitable: None,
        )
    assert caught.value.error_type == "SerializationError"
    assert len(registry) == before


def test_a_ref_in_use_is_not_swept() -> None:
    registry = RefRegistry(ttl=1.0)
    entry = registry.add(object(), "s")
    registry.get(entry.id, use=True)
    assert registry.sweep(now=entry.last_used + 10) == 0
    registry.done([entry])
    assert registry.sweep(now=entry.last_used + 0.5) == 0
    assert registry.sweep(now=entry.last_used + 10) == 1
    registry.close()


def test_a_slow_iterator_sends_what_it_has_before_the_deadline(dispatcher: ToolDispatcher) -> None:
    import time as _time

    def slow() -> Iterator[int]:
        for i in range(3):
            _time.sleep(0.2)
            yield i

    g = dispatcher.universal.to_wire(slow(), _wiring())["id"]
    # 0.5 s left: after the first item (0.2 s), a second pull would risk the
    # deadline, so the batch goes with one item however long the linger.
    handle = dispatcher.new_call(timeout=0.5)
    payload, _, _ = dispatcher.call(
        "snakepit.next", json.dumps({"ref": g, "max": 10, "linger_us": 10_000_000}).encode(), {}, "", {}, handle
    )
    assert json.loads(payload)["items"] == [0]
