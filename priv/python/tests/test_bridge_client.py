"""The bridge client (``_native.BridgeClient``, :class:`Bridge`, the session methods of
:class:`SessionContext`) against a real bridge server: ``target/release/snakepit-bridge``.

Also checks the server's wire format with an independent client (grpcio).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Tuple

import pytest
from conftest import BridgeServer

from snakepit_bridge import SessionContext
from snakepit_bridge.bridge import Bridge, Variable, set_process_bridge
from snakepit_bridge.errors import (
    BridgeError,
    BridgeUnavailable,
    ElixirToolNotFound,
    InvalidVariable,
    QuotaExceeded,
    SessionEnded,
    SessionNotFound,
    SessionRequired,
    VariableExists,
    VariableNotFound,
    VersionConflict,
    WatchOverflow,
)


@pytest.fixture(scope="module")
def bridge(bridge_server: BridgeServer) -> Bridge:
    return Bridge(bridge_server.address, bridge_server.token)


@pytest.fixture
def session_id(bridge: Bridge) -> Iterator[str]:
    sid = f"test-{uuid.uuid4().hex[:12]}"
    bridge.create_session(sid)
    yield sid
    bridge.delete_session(sid)


@pytest.fixture
def context(bridge_server: BridgeServer, session_id: str) -> Iterator[SessionContext]:
    """A tool's session context, its process bridge pointed at the test server."""
    set_process_bridge(Bridge(bridge_server.address, bridge_server.token, source="python"))
    yield SessionContext(session_id=session_id, worker_id="test-worker", metadata={"k": "v"})
    set_process_bridge(None)


def _recent(moment: datetime) -> bool:
    now = datetime.now(timezone.utc)
    return moment.tzinfo is not None and now - timedelta(minutes=1) < moment <= now + timedelta(seconds=5)


# -- node and sessions -----------------------------------------------------------


def test_version(bridge: Bridge) -> None:
    version = bridge.get_version()
    assert version["protocol_version"] == "1"
    assert set(version) == {"protocol_version", "bridge_version", "runtime_version"}


def test_session_lifecycle(bridge: Bridge) -> None:
    sid = f"life-{uuid.uuid4().hex[:8]}"
    created = bridge.create_session(sid, ttl_seconds=120, metadata={"owner": "pytest", "n": 1})
    assert created.session_id == sid
    assert created.ttl_seconds == 120
    assert created.metadata == {"owner": "pytest", "n": "1"}
    assert created.variable_count == 0 and created.watcher_count == 0
    assert _recent(created.created_at)
    assert created.expires_at - created.last_used_at == timedelta(seconds=120)

    again = bridge.create_session(sid, metadata={"ignored": "yes"})
    assert again.session_id == sid and again.metadata == {"owner": "pytest", "n": "1"}
    assert again.created_at == created.created_at

    time.sleep(0.01)
    touched = bridge.touch_session(sid)
    assert touched.last_used_at > created.last_used_at
    assert bridge.get_session(sid).session_id == sid
    assert sid in [s.session_id for s in bridge.list_sessions()]
    ids = [s.session_id for s in bridge.list_sessions()]
    assert ids == sorted(ids)

    assert bridge.delete_session(sid) is True
    assert bridge.delete_session(sid) is False
    with pytest.raises(SessionNotFound) as info:
        bridge.get_session(sid)
    assert info.value.reason == "session_not_found" and info.value.code == "NOT_FOUND"
    with pytest.raises(SessionNotFound):
        bridge.touch_session(sid)


def test_node_chooses_a_session_id(bridge: Bridge) -> None:
    info = bridge.create_session()
    try:
        assert info.session_id
    finally:
        assert bridge.delete_session(info.session_id)


# -- variables ---------------------------------------------------------------------


def test_register_and_get(bridge: Bridge, session_id: str) -> None:
    variable = bridge.register_variable(
        session_id, "temperature", "float", 0.7, constraints={"min": 0.0, "max": 2.0}, metadata={"unit": "C"}
    )
    assert isinstance(variable, Variable)
    assert variable.name == "temperature" and variable.type == "float" and variable.value == 0.7
    assert variable.constraints == {"min": 0.0, "max": 2.0}
    assert variable.metadata == {"unit": "C"}
    assert variable.version == 1 and variable.source == "client"
    assert variable.id
    assert _recent(variable.created_at) and variable.updated_at >= variable.created_at

    by_name = bridge.get_variable(session_id, "temperature")
    by_id = bridge.get_variable(session_id, variable.id)
    assert by_name == by_id == variable
    assert bridge.get_session(session_id).variable_count == 1


def test_values_of_every_type_round_trip(bridge: Bridge, session_id: str) -> None:
    cases = [
        ("i", "integer", 42, {"min": 0}),
        ("s", "string", "héllo ✓", {"max_length": 20}),
        ("b", "boolean", True, None),
        ("c", "choice", "b", {"choices": ["a", "b"]}),
        ("m", "module", "Predict", None),
        ("e", "embedding", [0.5, 1.0, -2.0], {"dimensions": 3}),
        ("t", "tensor", {"shape": [2, 2], "data": [1, 2, 3, 4]}, None),
        ("j", "json", {"nested": [1, None, {"x": "y"}]}, None),
    ]
    for name, kind, value, constraints in cases:
        registered = bridge.register_variable(session_id, name, kind, value, constraints=constraints)
        assert registered.value == value, kind
        assert bridge.get_variable(session_id, name).value == value, kind


def test_get_variables_reports_missing(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "a", "integer", 1)
    bridge.register_variable(session_id, "b", "integer", 2)
    found, missing = bridge.get_variables(session_id, ["b", "nope", "a"])
    assert [v.name for v in found] == ["b", "a"]
    assert [v.value for v in found] == [2, 1]
    assert missing == ["nope"]


def test_set_variable(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "x", "integer", 1)
    updated = bridge.set_variable(session_id, "x", 5, metadata={"why": "test"}, source="python")
    assert updated.value == 5 and updated.version == 2
    assert updated.source == "python" and updated.update_metadata == {"why": "test"}
    again = bridge.set_variable(session_id, "x", 6, expected_version=2)
    assert again.version == 3 and again.source == "client"


def test_version_conflict_writes_nothing(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "x", "integer", 1)
    bridge.set_variable(session_id, "x", 2)
    with pytest.raises(VersionConflict) as info:
        bridge.set_variable(session_id, "x", 3, expected_version=1)
    assert info.value.reason == "version_conflict" and info.value.code == "ABORTED"
    assert info.value.message == str(info.value)
    current = bridge.get_variable(session_id, "x")
    assert current.value == 2 and current.version == 2


def test_invalid_variables(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "p", "float", 0.5, constraints={"min": 0, "max": 1})
    with pytest.raises(InvalidVariable) as info:
        bridge.set_variable(session_id, "p", 1.5)
    assert info.value.reason == "invalid_value" and info.value.code == "INVALID_ARGUMENT"
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidVariable):
        bridge.set_variable(session_id, "p", "not a number")
    assert bridge.get_variable(session_id, "p").version == 1

    with pytest.raises(InvalidVariable) as info:
        bridge.register_variable(session_id, "q", "no-such-type", 1)
    assert info.value.reason == "invalid_type"
    with pytest.raises(InvalidVariable) as info:
        bridge.register_variable(session_id, "q", "integer", 1, constraints={"bogus": 1})
    assert info.value.reason == "invalid_constraints"
    with pytest.raises(InvalidVariable) as info:
        bridge.register_variable(session_id, "q", "integer", 5, constraints={"max": 3})
    assert info.value.reason == "invalid_value"


def test_unencodable_values_fail_before_sending(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "j", "json", None)
    with pytest.raises(InvalidVariable) as info:
        bridge.set_variable(session_id, "j", object())
    assert info.value.reason == "invalid_value" and info.value.code == ""
    with pytest.raises(InvalidVariable):
        bridge.set_variable(session_id, "j", float("nan"))
    assert bridge.get_variable(session_id, "j").version == 1


def test_variable_exists_and_not_found(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "x", "integer", 1)
    with pytest.raises(VariableExists) as exists:
        bridge.register_variable(session_id, "x", "integer", 2)
    assert exists.value.reason == "variable_exists" and exists.value.code == "ALREADY_EXISTS"
    with pytest.raises(VariableNotFound) as missing:
        bridge.get_variable(session_id, "y")
    assert missing.value.reason == "variable_not_found" and missing.value.code == "NOT_FOUND"
    with pytest.raises(VariableNotFound):
        bridge.set_variable(session_id, "y", 1)


def test_unknown_session(bridge: Bridge) -> None:
    with pytest.raises(SessionNotFound):
        bridge.get_variable("no-such-session", "x")
    with pytest.raises(SessionNotFound):
        bridge.register_variable("no-such-session", "x", "integer", 1)
    with pytest.raises(SessionNotFound):
        bridge.list_variables("no-such-session")


def test_set_variables_is_atomic(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "a", "integer", 1)
    bridge.register_variable(session_id, "b", "integer", 1, constraints={"max": 10})
    updated = bridge.set_variables(session_id, {"a": 2, "b": 3}, metadata={"batch": "1"})
    assert {k: (v.value, v.version) for k, v in updated.items()} == {"a": (2, 2), "b": (3, 2)}
    assert updated["a"].update_metadata == {"batch": "1"}

    with pytest.raises(InvalidVariable):
        bridge.set_variables(session_id, {"a": 100, "b": 100})
    with pytest.raises(VersionConflict):
        bridge.set_variables(session_id, {"a": 7, "b": 7}, expected_versions={"a": 2, "b": 1})
    with pytest.raises(VariableNotFound):
        bridge.set_variables(session_id, {"a": 8, "nope": 8})
    found, _ = bridge.get_variables(session_id, ["a", "b"])
    assert [(v.value, v.version) for v in found] == [(2, 2), (3, 2)]


def test_list_and_delete(bridge: Bridge, session_id: str) -> None:
    for name in ["model_b", "model_a", "other"]:
        bridge.register_variable(session_id, name, "integer", 0)
    assert [v.name for v in bridge.list_variables(session_id)] == ["model_a", "model_b", "other"]
    assert [v.name for v in bridge.list_variables(session_id, "model_*")] == ["model_a", "model_b"]
    assert bridge.list_variables(session_id, "zzz*") == []

    bridge.delete_variable(session_id, "model_a")
    assert [v.name for v in bridge.list_variables(session_id)] == ["model_b", "other"]
    with pytest.raises(VariableNotFound):
        bridge.delete_variable(session_id, "model_a")
    again = bridge.register_variable(session_id, "model_a", "string", "back")
    assert again.version == 1 and again.value == "back"


def test_quotas(quota_server: BridgeServer) -> None:
    bridge = Bridge(quota_server.address, quota_server.token)
    bridge.create_session("only")
    try:
        with pytest.raises(QuotaExceeded) as sessions:
            bridge.create_session("second")
        assert sessions.value.reason == "session_quota_exceeded"
        assert sessions.value.code == "RESOURCE_EXHAUSTED"
        bridge.create_session("only")  # renewing the existing one is no new session

        bridge.register_variable("only", "a", "integer", 1)
        with pytest.raises(QuotaExceeded) as variables:
            bridge.register_variable("only", "b", "integer", 1)
        assert variables.value.reason == "variable_quota_exceeded"
    finally:
        bridge.delete_session("only")


# -- connection and errors ------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_bridge() -> None:
    with pytest.raises(BridgeUnavailable) as info:
        Bridge(f"127.0.0.1:{_closed_port()}", "token")
    assert info.value.code == "UNAVAILABLE"
    assert "cannot connect" in info.value.message


def test_wrong_token_is_refused(bridge_server: BridgeServer) -> None:
    stranger = Bridge(bridge_server.address, "not-the-token")
    with pytest.raises(BridgeError) as info:
        stranger.list_sessions()
    assert info.value.code == "UNAUTHENTICATED"


def test_native_errors_carry_code_reason_message(bridge_server: BridgeServer) -> None:
    from snakepit_bridge import _native

    async def calls() -> None:
        client = await _native.BridgeClient.connect(bridge_server.address, bridge_server.token)
        with pytest.raises(_native.BridgeError) as info:
            await client.get_session("no-such-session")
        assert info.value.code == "NOT_FOUND" and info.value.reason == "session_not_found"
        assert info.value.args == (info.value.code, info.value.reason, info.value.message)
        assert await client.delete_session("no-such-session") is False

    asyncio.run(calls())


def test_from_environment(bridge_server: BridgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_process_bridge(None)
    monkeypatch.delenv("SNAKEPIT_BRIDGE_ADDRESS", raising=False)
    monkeypatch.setenv("SNAKEPIT_TOKEN", bridge_server.token)
    with pytest.raises(BridgeUnavailable) as info:
        Bridge.from_environment()
    assert info.value.reason == "not_configured"
    assert "SNAKEPIT_BRIDGE_ADDRESS" in info.value.message

    monkeypatch.setenv("SNAKEPIT_BRIDGE_ADDRESS", bridge_server.address)
    try:
        first = Bridge.from_environment()
        assert Bridge.from_environment() is first
        assert first.source == "python"
        assert first.get_version()["protocol_version"] == "1"
    finally:
        set_process_bridge(None)


def test_elixir_tools_of_a_bare_server(bridge: Bridge) -> None:
    assert isinstance(bridge.list_elixir_tools(), list)
    with pytest.raises(ElixirToolNotFound) as info:
        bridge.call_elixir_tool("no_such_tool", {"x": 1})
    assert info.value.reason == "tool_not_found" and info.value.code == "NOT_FOUND"


def test_concurrent_calls_share_one_client(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "n", "integer", 0)
    errors = []

    def work(k: int) -> None:
        try:
            for i in range(20):
                bridge.set_variable(session_id, "n", k * 100 + i)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert bridge.get_variable(session_id, "n").version == 1 + 8 * 20


# -- SessionContext ----------------------------------------------------------------------


def test_session_context_methods(context: SessionContext, bridge: Bridge) -> None:
    registered = context.register_variable("lr", "float", 0.1, constraints={"min": 0}, metadata={"m": "1"})
    assert registered.source == "python" and registered.version == 1
    assert context.get_variable("lr") == 0.1
    info = context.get_variable_info("lr")
    assert info.constraints == {"min": 0} and info.metadata == {"m": "1"}

    written = context.set_variable("lr", 0.2, metadata={"step": 1})
    assert written.version == 2 and written.update_metadata == {"step": "1"}
    assert bridge.get_variable(context.session_id, "lr").source == "python"
    with pytest.raises(VersionConflict):
        context.set_variable("lr", 0.3, expected_version=1)
    assert context.set_variable("lr", 0.3, expected_version=2).version == 3

    context.register_variable("steps", "integer", 0)
    assert context.get_variables(["lr", "missing", "steps"]) == {"lr": 0.3, "steps": 0}
    updated = context.update_variables({"lr": 0.4, "steps": 1}, expected_versions={"steps": 1})
    assert {k: v.version for k, v in updated.items()} == {"lr": 4, "steps": 2}
    with pytest.raises(VersionConflict):
        context.update_variables({"lr": 0.5, "steps": 2}, expected_versions={"steps": 1})
    assert context.get_variables(["lr", "steps"]) == {"lr": 0.4, "steps": 1}

    assert [v.name for v in context.list_variables()] == ["lr", "steps"]
    assert [v.name for v in context.list_variables("st*")] == ["steps"]
    context.delete_variable("steps")
    with pytest.raises(VariableNotFound):
        context.get_variable("steps")
    with pytest.raises(InvalidVariable):
        context.set_variable("lr", -1.0)

    assert isinstance(context.list_elixir_tools(), list)
    with pytest.raises(ElixirToolNotFound):
        context.call_elixir_tool("no_such_tool", a=1)


def test_sessionless_call_has_no_variables(bridge_server: BridgeServer) -> None:
    context = SessionContext(session_id="", worker_id="w")
    for call in (
        lambda: context.get_variable("x"),
        lambda: context.set_variable("x", 1),
        lambda: context.register_variable("x", "integer", 1),
        lambda: context.list_variables(),
        lambda: context.update_variables({"x": 1}),
        lambda: context.delete_variable("x"),
        lambda: context.get_variables(["x"]),
    ):
        with pytest.raises(SessionRequired) as info:
            call()
        assert "no session" in str(info.value)


def test_call_elixir_tool_after_the_deadline(context: SessionContext) -> None:
    context.deadline = time.monotonic() - 1
    with pytest.raises(TimeoutError):
        context.call_elixir_tool("anything")


def test_session_context_aio(context: SessionContext) -> None:
    async def main() -> Tuple[Any, ...]:
        aio = context.aio
        registered = await aio.register_variable("v", "integer", 1, constraints={"max": 100})
        written = await aio.set_variable("v", 2, expected_version=1, metadata={"a": "b"})
        value = await aio.get_variable("v")
        info = await aio.get_variable_info("v")
        await aio.register_variable("w", "string", "x")
        updated = await aio.update_variables({"v": 3, "w": "y"})
        values = await aio.get_variables(["v", "w", "none"])
        names = [v.name for v in await aio.list_variables("*")]
        await aio.delete_variable("w")
        tools = await aio.list_elixir_tools()
        with pytest.raises(ElixirToolNotFound):
            await aio.call_elixir_tool("no_such_tool", x=1)
        # Several at once: the loop is not blocked while the bridge answers.
        together = await asyncio.gather(*(aio.get_variable("v") for _ in range(5)))
        return registered, written, value, info, updated, values, names, tools, together

    registered, written, value, info, updated, values, names, tools, together = asyncio.run(main())
    assert registered.version == 1 and written.version == 2 and value == 2
    assert info.update_metadata == {"a": "b"}
    assert {k: v.version for k, v in updated.items()} == {"v": 3, "w": 2}
    assert values == {"v": 3, "w": "y"}
    assert names == ["v", "w"]
    assert isinstance(tools, list)
    assert together == [3] * 5
    with pytest.raises(VariableNotFound):
        context.get_variable("w")


# -- watches -------------------------------------------------------------------------


def test_watch_initial_values_changes_and_close(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "a", "integer", 1)
    bridge.register_variable(session_id, "b", "string", "x")
    with bridge.watch_variables(session_id, ["b", "a"]) as watch:
        first, second = watch.next(5), watch.next(5)
        assert first is not None and second is not None
        assert [(u.update_type, u.name, u.value) for u in (first, second)] == [
            ("initial_value", "b", "x"),
            ("initial_value", "a", 1),
        ]
        assert first.is_initial and first.old_value is None

        bridge.set_variable(session_id, "a", 2, metadata={"who": "test"}, source="elixir")
        change = watch.next(5)
        assert change is not None
        assert (change.update_type, change.name, change.old_value, change.value) == ("value_change", "a", 1, 2)
        assert change.source == "elixir" and change.metadata == {"who": "test"}
        assert change.version == 2 and change.variable is not None and change.variable.version == 2
        assert change.variable_id == change.variable.id
        assert _recent(change.timestamp)

        assert watch.next(0.1) is None  # quiet: a timeout, not an end
        assert bridge.get_session(session_id).watcher_count == 1

        bridge.delete_variable(session_id, "b")
        deleted = watch.next(5)
        assert deleted is not None and deleted.update_type == "deleted" and deleted.name == "b"

    assert watch.closed
    with pytest.raises(StopIteration):
        watch.next(1)
    _wait_for(lambda: bridge.get_session(session_id).watcher_count == 0)


def test_watch_without_initial_values_and_iteration(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "n", "integer", 0)
    watch = bridge.watch_variables(session_id, ["n"], include_initial=False)

    def writer() -> None:
        for i in range(1, 6):
            bridge.set_variable(session_id, "n", i)

    threading.Thread(target=writer).start()
    seen = []
    for update in watch:
        seen.append((update.old_value, update.value, update.version))
        if len(seen) == 5:
            watch.close()
    assert seen == [(i - 1, i, i + 1) for i in range(1, 6)]


def test_watch_heartbeats(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "h", "integer", 0)
    with bridge.watch_variables(session_id, ["h"], include_initial=False, heartbeat_ms=50, heartbeats=True) as watch:
        started = time.monotonic()
        beats = [watch.next(2) for _ in range(3)]
        assert all(b is not None and b.is_heartbeat for b in beats)
        assert all(b.variable is None and b.version == 0 and b.name == "" for b in beats if b)
        assert time.monotonic() - started < 2
    # Without heartbeats=True they are skipped.
    with bridge.watch_variables(session_id, ["h"], include_initial=False, heartbeat_ms=50) as quiet:
        assert quiet.next(0.3) is None


def test_waits_that_time_out_lose_no_update(bridge: Bridge, session_id: str) -> None:
    # Each next(timeout) that runs out cancels the await of the native
    # stream; the updates that arrive meanwhile stay for the next call.
    bridge.register_variable(session_id, "n", "integer", 0)
    watch = bridge.watch_variables(session_id, ["n"], include_initial=False)

    def writer() -> None:
        for i in range(1, 201):
            bridge.set_variable(session_id, "n", i)

    thread = threading.Thread(target=writer)
    thread.start()
    versions: list = []
    deadline = time.monotonic() + 30
    while len(versions) < 200 and time.monotonic() < deadline:
        update = watch.next(0.0005)
        if update is not None:
            versions.append(update.version)
    thread.join()
    watch.close()
    assert versions == list(range(2, 202))


def test_async_watch_streams_and_cancelled_waits_lose_no_update(bridge: Bridge, session_id: str) -> None:
    async def watch() -> None:
        await bridge.aio.register_variable(session_id, "n", "integer", 0)
        async with await bridge.aio.watch_variables(session_id, ["n"], include_initial=False) as updates:
            for i in range(1, 51):
                await bridge.aio.set_variable(session_id, "n", i)
            values: list = []
            while len(values) < 50:
                try:
                    update = await asyncio.wait_for(updates.next(), 0.0005)
                except asyncio.TimeoutError:
                    continue
                assert update is not None
                values.append(update.value)
            assert values == list(range(1, 51))
        assert updates.closed
        assert await updates.next() is None

    asyncio.run(watch())


def test_close_from_another_thread_ends_a_waiting_next(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "x", "integer", 0)
    watch = bridge.watch_variables(session_id, ["x"], include_initial=False)
    threading.Timer(0.2, watch.close).start()
    started = time.monotonic()
    with pytest.raises(StopIteration):
        watch.next()
    assert time.monotonic() - started < 2


def test_dropping_a_watch_cancels_it(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "x", "integer", 0)
    watch = bridge.watch_variables(session_id, ["x"])
    assert watch.next(5) is not None
    _wait_for(lambda: bridge.get_session(session_id).watcher_count == 1)
    del watch
    _wait_for(lambda: bridge.get_session(session_id).watcher_count == 0)


def test_watch_errors(bridge: Bridge, session_id: str) -> None:
    with pytest.raises(VariableNotFound):
        bridge.watch_variables(session_id, ["nope"])
    with pytest.raises(SessionNotFound):
        bridge.watch_variables("no-such-session", ["x"])


def test_watch_ends_when_the_session_goes(bridge: Bridge) -> None:
    sid = f"ending-{uuid.uuid4().hex[:8]}"
    bridge.create_session(sid)
    bridge.register_variable(sid, "x", "integer", 0)
    watch = bridge.watch_variables(sid, ["x"], include_initial=False)
    bridge.delete_session(sid)
    with pytest.raises(SessionEnded) as info:
        watch.next(5)
    assert info.value.reason == "session_ended" and info.value.code == "NOT_FOUND"


def test_a_slow_watcher_overflows(bridge: Bridge, session_id: str) -> None:
    bridge.register_variable(session_id, "big", "string", "")
    watch = bridge.watch_variables(session_id, ["big"], include_initial=False, max_buffered=2)
    # Enough data to fill HTTP/2 windows and buffers, then the watch's own buffer.
    chunk = "x" * 16384
    for i in range(400):
        bridge.set_variable(session_id, "big", f"{i}{chunk}")
    seen = 0
    with pytest.raises(WatchOverflow) as info:
        while True:
            update = watch.next(5)
            assert update is not None, "the stream went quiet instead of reporting the overflow"
            assert update.version == seen + 2  # no change skipped before the end
            seen += 1
    assert info.value.reason == "watch_overflow" and info.value.code == "RESOURCE_EXHAUSTED"
    assert 0 < seen < 400


def _wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# -- an independent client (grpcio) ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _string_fields(message: bytes) -> dict:
    """The length-delimited fields of a protobuf message, by field number (last wins)."""
    fields, pos = {}, 0
    while pos < len(message):
        key, pos = _read_varint(message, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _read_varint(message, pos)
        elif wire_type == 2:
            length, pos = _read_varint(message, pos)
            fields[number] = message[pos : pos + length]
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:  # pragma: no cover
            raise AssertionError(f"unexpected wire type {wire_type}")
    return fields


def test_independent_grpc_client(bridge_server: BridgeServer, bridge: Bridge) -> None:
    import grpc  # installed in the test venv by scripts/test.sh

    identity = lambda b: b  # noqa: E731
    with grpc.insecure_channel(bridge_server.address) as channel:

        def method(name: str) -> Any:
            return channel.unary_unary(
                f"/snakepit.v1.BridgeService/{name}", request_serializer=identity, response_deserializer=identity
            )

        list_sessions = method("ListSessions")
        with pytest.raises(grpc.RpcError) as missing:
            list_sessions(b"", timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as wrong:
            list_sessions(b"", metadata=[("x-snakepit-token", "0" * 64)], timeout=10)
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

        auth = [("x-snakepit-token", bridge_server.token)]
        response, call = list_sessions.with_call(b"", metadata=auth, timeout=10)
        assert call.code() == grpc.StatusCode.OK and isinstance(response, bytes)

        sid = f"wire-{uuid.uuid4().hex[:8]}".encode()
        request = b"\x0a" + _varint(len(sid)) + sid  # CreateSessionRequest{session_id = 1}
        created = method("CreateSession")(request, metadata=auth, timeout=10)
        assert _string_fields(created)[1] == sid  # SessionInfo.session_id = 1
        try:
            assert bridge.get_session(sid.decode()).session_id == sid.decode()
            listed = method("ListSessions")(b"", metadata=auth, timeout=10)
            sessions = []
            pos = 0
            while pos < len(listed):  # ListSessionsResponse: repeated SessionInfo sessions = 1
                key, pos = _read_varint(listed, pos)
                assert key == 0x0A
                length, pos = _read_varint(listed, pos)
                sessions.append(_string_fields(listed[pos : pos + length])[1])
                pos += length
            assert sid in sessions
        finally:
            bridge.delete_session(sid.decode())

        # The error reason travels in the trailing metadata.
        unknown = b"no-such-session"
        with pytest.raises(grpc.RpcError) as not_found:
            method("GetSession")(b"\x0a" + _varint(len(unknown)) + unknown, metadata=auth, timeout=10)
        assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(not_found.value.trailing_metadata())["x-snakepit-error"] == "session_not_found"


def test_unread_watches_do_not_stall_other_calls(bridge: Bridge, session_id: str) -> None:
    """Each watch has its own connection: updates nobody reads hold no window other calls need."""
    bridge.register_variable(session_id, "big", "string", "")
    watches = [bridge.watch_variables(session_id, ["big"], include_initial=False) for _ in range(4)]
    try:
        chunk = "y" * 16384
        started = time.monotonic()
        for i in range(500):  # about 8 MB of updates for each watch, none read
            bridge.set_variable(session_id, "big", f"{i}{chunk}")
        assert bridge.get_variable(session_id, "big").version == 501
        assert time.monotonic() - started < 20
    finally:
        for watch in watches:
            watch.close()


# -- the Elixir tests' adapter, through the dispatcher ------------------------------------


def test_session_tools_adapter(bridge_server: BridgeServer, bridge: Bridge, session_id: str) -> None:
    """``test/support/python/session_adapters.py`` as a worker runs it: tools, sync and async."""
    import json
    import sys

    from snakepit_bridge.dispatcher import ToolDispatcher
    from snakepit_bridge.errors import ToolFailure

    support = str(Path(__file__).resolve().parents[3] / "test" / "support" / "python")
    sys.path.insert(0, support)
    set_process_bridge(Bridge(bridge_server.address, bridge_server.token, source="python"))
    try:
        from session_adapters import SessionToolsAdapter

        dispatcher = ToolDispatcher(SessionToolsAdapter(), "w-adapter")

        def call(tool_name: str, /, **kwargs: object) -> Any:
            payload, is_raw, _ = dispatcher.call(tool_name, json.dumps(kwargs).encode(), {}, session_id, {})
            assert not is_raw
            return json.loads(payload)

        try:
            info = call("register_var", name="x", type="integer", value=1, constraints={"max": 100})
            assert info["version"] == 1 and info["source"] == "python"
            assert call("set_var", name="x", value=2, metadata={"m": 1}) == {"version": 2}
            assert call("get_var", name="x") == 2
            details = call("var_info", name="x")
            assert isinstance(details, dict) and details["update_metadata"] == {"m": "1"}
            assert datetime.fromisoformat(details["updated_at"]).tzinfo is not None
            assert call("aset_var", name="x", value=3) == {"version": 3}
            assert call("aget_var", name="x") == 3
            assert call("set_many_times", name="x", count=5) == 8
            call("register_var", name="y", type="string", value="a")
            assert call("update_vars", values={"x": 9, "y": "b"}) == {"x": 9, "y": 2}
            assert call("get_vars", names=["x", "y", "z"]) == {"x": 9, "y": "b"}
            assert call("list_vars") == ["x", "y"]
            assert call("delete_var", name="y") is True
            assert call("list_vars", pattern="y*") == []
            assert call("try_set_var", name="x", value=1, expected_version=1) == {
                "ok": False,
                "error": "VersionConflict",
                "reason": "version_conflict",
                "message": bridge_error_message(bridge, session_id),
            }
            assert bridge.get_variable(session_id, "x").value == 9
            assert call("elixir_tools") == []
            with pytest.raises(ToolFailure) as failure:
                call("call_elixir", tool="nope", args={})
            assert failure.value.error_type == "ElixirToolNotFound"
            with pytest.raises(ToolFailure) as failure:
                call("set_var", name="x", value=1000)
            assert failure.value.error_type == "InvalidVariable"
        finally:
            dispatcher.shutdown()
    finally:
        set_process_bridge(None)
        sys.path.remove(support)


def bridge_error_message(bridge: Bridge, session_id: str) -> str:
    """The message the node gives a stale write of ``x`` (to compare with what a tool reports)."""
    try:
        bridge.set_variable(session_id, "x", 1, expected_version=1)
    except VersionConflict as exc:
        return exc.message
    raise AssertionError("expected a version conflict")


@pytest.mark.parametrize("timeout", [1e300, 1e12, -1.0, 0.0, float("nan"), float("inf")])
def test_absurd_timeouts_are_value_errors_not_panics(timeout: float) -> None:
    from snakepit_bridge import _native

    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        asyncio.run(_native.BridgeClient.connect("127.0.0.1:9", "0" * 64, timeout))
