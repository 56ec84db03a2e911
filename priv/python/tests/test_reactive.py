"""The async session API, ``watch_variables`` and the reactive helpers against a real bridge server.

Every test runs its coroutine with :func:`asyncio.run` (no pytest plugin) under
a bound (:func:`run`); waits for something to happen are bounded polls, never
fixed sleeps. Reconnection is tested through :class:`TcpProxy`, a small TCP
relay in front of the server that the test stops (cutting every connection)
and starts again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Iterator, List, Optional, Tuple, TypeVar

import pytest
from conftest import BridgeServer

from snakepit_bridge import SessionContext, watching
from snakepit_bridge.bridge import Bridge, VariableUpdate, set_process_bridge
from snakepit_bridge.errors import (
    BridgeError,
    InvalidVariable,
    SessionEnded,
    SessionNotFound,
    SessionRequired,
    VariableNotFound,
    WatchOverflow,
)
from snakepit_bridge.reactive import ReactiveVariable, VariableGroup, watch_for_condition
from snakepit_bridge.session_context import AsyncSessionContext, infer_variable_type

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run a test coroutine, failing (not hanging) if it takes longer than ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def eventually(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` (sync or async) until true, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.01)


async def next_update(updates: Any, timeout: float = 5.0) -> VariableUpdate:
    return await asyncio.wait_for(updates.__anext__(), timeout)


@pytest.fixture(scope="module")
def bridge(bridge_server: BridgeServer) -> Bridge:
    """A direct client, for writes from "someone else" (recorded as ``client``)."""
    return Bridge(bridge_server.address, bridge_server.token)


@pytest.fixture
def session_id(bridge: Bridge) -> Iterator[str]:
    sid = f"reactive-{uuid.uuid4().hex[:12]}"
    yield sid
    bridge.delete_session(sid)


def watchers(bridge: Bridge, session_id: str) -> int:
    return bridge.get_session(session_id).watcher_count


# -- a TCP relay that can cut every connection ---------------------------------------


class TcpProxy:
    """Relays ``127.0.0.1:port`` to the bridge; :meth:`stop` cuts every connection, :meth:`start` listens again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._stopped = threading.Event()
        self._acceptor: Optional[threading.Thread] = None
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        deadline = time.monotonic() + 5.0
        while True:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:  # the old connections on this port are still closing
                listener.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stopped = threading.Event()
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True)
        self._acceptor.start()
        return self

    @staticmethod
    def _reset(s: socket.socket) -> None:
        """Close with a reset: no lingering state holds the port."""
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv
        except OSError:
            pass
        s.close()

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                if stopped.is_set():
                    self._reset(client)
                    self._reset(upstream)
                    return
                self._sockets += [client, upstream]
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop listening and reset every relayed connection."""
        self._stopped.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            self._reset(s)


@pytest.fixture
def proxy(bridge_server: BridgeServer) -> Iterator[TcpProxy]:
    relay = TcpProxy(bridge_server.port).start()
    yield relay
    relay.stop()


# -- SessionContext.connect and the async session API --------------------------------------


def test_connect_creates_the_session_and_offers_the_async_api(
    bridge_server: BridgeServer, bridge: Bridge, session_id: str
) -> None:
    async def main() -> None:
        async with SessionContext.connect(bridge_server.address, session_id, token=bridge_server.token) as session:
            assert isinstance(session, AsyncSessionContext)
            assert session.session_id == session_id
            assert bridge.get_session(session_id).session_id == session_id  # created

            # A missing variable is registered by set_variable, its type inferred.
            created = await session.set_variable("temperature", 20.0, metadata={"unit": "C"})
            assert (created.type, created.value, created.version, created.source) == ("float", 20.0, 1, "client")
            assert (await session.set_variable("steps", 3)).type == "integer"
            assert (await session.set_variable("status", "online")).type == "string"
            assert (await session.set_variable("ok", True)).type == "boolean"
            assert (await session.set_variable("config", {"a": [1, 2]})).type == "json"
            written = await session.set_variable("temperature", 21.5)
            assert written.version == 2
            with pytest.raises(VariableNotFound):
                await session.set_variable("nope", 1, create=False)
            with pytest.raises(VariableNotFound):
                await session.set_variable("nope", 1, expected_version=1)

            registered = await session.register_variable("p", "float", 0.5, constraints={"min": 0, "max": 1})
            assert registered.constraints == {"min": 0, "max": 1}
            assert await session.get_variable("temperature") == 21.5
            assert (await session.get_variable_info("p")).version == 1
            assert await session.get_variables(["p", "steps", "missing"]) == {"p": 0.5, "steps": 3}

            updated = await session.update_variables({"p": 0.7, "steps": 4})
            assert {k: v.version for k, v in updated.items()} == {"p": 2, "steps": 2}
            with pytest.raises(InvalidVariable):  # atomic: nothing written
                await session.update_variables({"steps": 5, "p": 2.0})
            assert bridge.get_variable(session_id, "steps").value == 4

            names = [v.name for v in await session.list_variables()]
            assert names == ["config", "ok", "p", "status", "steps", "temperature"]
            await session.delete_variable("ok")
            with pytest.raises(VariableNotFound):
                await session.get_variable("ok")
            assert "ok" not in session.cache
            assert session.cache.value("temperature") == 21.5
            assert await session.list_elixir_tools() == []

    run(main())


def test_connect_from_the_environment_needs_only_the_session_id(
    bridge_server: BridgeServer, bridge: Bridge, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_process_bridge(None)
    monkeypatch.setenv("SNAKEPIT_BRIDGE_ADDRESS", bridge_server.address)
    monkeypatch.setenv("SNAKEPIT_TOKEN", bridge_server.token)

    async def main() -> None:
        async with SessionContext.connect(session_id=session_id) as session:
            variable = await session.set_variable("x", 1)
            assert variable.source == "python"  # worker code
        async with SessionContext.connect(None, "", delete_on_exit=True) as chosen:
            assert chosen.session_id  # the node chose an id
            picked = chosen.session_id
        with pytest.raises(SessionNotFound):
            bridge.get_session(picked)

    try:
        run(main())
    finally:
        set_process_bridge(None)
    assert bridge.get_variable(session_id, "x").value == 1

    monkeypatch.delenv("SNAKEPIT_BRIDGE_ADDRESS")

    async def unconfigured() -> None:
        async with SessionContext.connect(session_id="s"):
            pass  # pragma: no cover

    with pytest.raises(BridgeError) as info:
        run(unconfigured())
    assert info.value.reason == "not_configured"


def test_infer_variable_type() -> None:
    assert [infer_variable_type(v) for v in (True, 1, 1.5, "s", [1.0], None, {"a": 1})] == [
        "boolean",
        "integer",
        "float",
        "string",
        "json",
        "json",
        "json",
    ]


# -- watch_variables ------------------------------------------------------------------------


@pytest.fixture
def connected(bridge_server: BridgeServer, session_id: str) -> Callable[..., Any]:
    """``connected(**kw)``: ``SessionContext.connect`` to the test server and session."""

    def open_(address: Optional[str] = None, **kwargs: Any) -> Any:
        return SessionContext.connect(address or bridge_server.address, session_id, token=bridge_server.token, **kwargs)

    return open_


def test_watch_delivers_initial_values_then_changes(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("temperature", 20.0)
            await session.set_variable("status", "online")
            async with session.watch_variables(["temperature", "status"]) as updates:
                first, second = await next_update(updates), await next_update(updates)
                assert [(u.update_type, u.variable_name, u.value) for u in (first, second)] == [
                    ("initial_value", "temperature", 20.0),
                    ("initial_value", "status", "online"),
                ]
                assert first.is_initial and first.old_value is None and first.change_magnitude is None
                assert first.version == 1

                bridge.set_variable(session_id, "temperature", 23.5, metadata={"who": "test"}, source="elixir")
                change = await next_update(updates)
                assert (change.update_type, change.variable_name, change.old_value, change.value) == (
                    "value_change",
                    "temperature",
                    20.0,
                    23.5,
                )
                assert not change.is_initial and not change.resync
                assert change.change_magnitude == pytest.approx(3.5)
                assert change.version == 2 and change.source == "elixir" and change.metadata == {"who": "test"}
                assert change.variable_id == change.variable.id  # type: ignore[union-attr]

                bridge.set_variable(session_id, "status", "busy")
                status = await next_update(updates)
                assert (status.variable_name, status.old_value, status.value) == ("status", "online", "busy")
                assert status.change_magnitude is None

                # The watch keeps the cache fresh: reads no longer ask the node.
                await eventually(lambda: session.cache.is_live("temperature"), what="live cache")
                asked: List[str] = []
                original = session.context.get_variable_info

                def spy(name: str) -> Any:
                    asked.append(name)
                    return original(name)

                session.context.get_variable_info = spy
                assert await session.get_variable("temperature") == 23.5
                assert await session.get_variable("status") == "busy"
                assert asked == []
                bridge.delete_variable(session_id, "status")
                deleted = await next_update(updates)
                assert deleted.is_deleted and deleted.variable_name == "status"
                assert "status" not in session.cache
            assert not session.cache.is_live("temperature")
            assert await session.get_variable("temperature") == 23.5

    run(main())


def test_watch_without_initial_values_and_watch_variable(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("n", 0)
            async with session.watch_variable("n", include_initial=False) as updates:
                assert watchers(bridge, session_id) == 0  # the stream opens on first use
                await updates.wait_ready(timeout=5)  # ... or here: every change from now on is seen
                assert watchers(bridge, session_id) == 1 and session.cache.is_live("n")
                bridge.set_variable(session_id, "n", 1)
                update = await next_update(updates)
                assert (update.update_type, update.old_value, update.value, update.version) == (
                    "value_change",
                    0,
                    1,
                    2,
                )

    run(main())


def test_watch_argument_errors(connected: Any, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            with pytest.raises(ValueError):
                session.watch_variables([])
            with pytest.raises(ValueError):
                session.watch_variables(["x"], debounce_ms=-1)
            with pytest.raises(VariableNotFound):
                async for _ in session.watch_variables(["missing"]):
                    pass  # pragma: no cover
            with pytest.raises(VariableNotFound):
                await session.watch_variables(["missing"]).wait_ready(timeout=5)
        sessionless = SessionContext(session_id="", worker_id="w")
        with pytest.raises(SessionRequired):
            sessionless.aio.watch_variables(["x"])

    run(main())


def test_filter(connected: Any, bridge: Bridge, session_id: str) -> None:
    def significant(name: str, old: Any, new: Any) -> bool:
        return old is None or abs(new - old) > 0.5

    async def main() -> None:
        async with connected() as session:
            await session.set_variable("t", 20.0)
            seen: List[Tuple[str, float]] = []
            async with session.watch_variables(["t"], filter_fn=significant) as updates:
                async for update in updates:
                    seen.append((update.update_type, update.value))
                    if update.is_initial:
                        for value in (20.1, 20.2, 21.0, 21.3, 25.0):
                            bridge.set_variable(session_id, "t", value)
                    if update.value == 25.0:
                        break
            assert seen == [("initial_value", 20.0), ("value_change", 21.0), ("value_change", 25.0)]

    run(main())


def test_failing_filter_goes_to_on_error_and_the_update_passes(connected: Any, bridge: Bridge, session_id: str) -> None:
    errors: List[BaseException] = []

    def broken(name: str, old: Any, new: Any) -> bool:
        if new == 2:
            raise ZeroDivisionError("bad filter")
        return True

    async def main() -> None:
        async with connected() as session:
            await session.set_variable("x", 1)
            values = []
            async for update in session.watch_variables(["x"], filter_fn=broken, on_error=errors.append):
                values.append(update.value)
                if update.is_initial:
                    bridge.set_variable(session_id, "x", 2)
                    bridge.set_variable(session_id, "x", 3)
                if update.value == 3:
                    break
            assert values == [1, 2, 3]

    run(main())
    assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)


def test_trailing_debounce_ends_on_the_final_value(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> Tuple[List[VariableUpdate], float]:
        async with connected() as session:
            await session.set_variable("rapid", 0)
            burst_time = 0.0

            def burst() -> None:
                nonlocal burst_time
                started = time.monotonic()
                for i in range(1, 101):
                    bridge.set_variable(session_id, "rapid", i)
                burst_time = time.monotonic() - started

            got: List[VariableUpdate] = []
            async with session.watch_variables(["rapid"], debounce_ms=100) as updates:
                got.append(await next_update(updates))  # the initial value
                writer = asyncio.ensure_future(asyncio.to_thread(burst))
                while not got or got[-1].value != 100:
                    got.append(await next_update(updates))
                await writer
                # Nothing else comes: the final value was the last word.
                with pytest.raises(asyncio.TimeoutError):
                    await next_update(updates, timeout=0.3)
            return got, burst_time

    got, burst_time = run(main())
    changes = [u for u in got if not u.is_initial]
    assert burst_time < 0.5, f"the burst took {burst_time:.3f} s"
    assert 1 <= len(changes) <= 4, [(u.value, u.version) for u in changes]
    assert changes[-1].value == 100 and changes[-1].version == 101
    versions = [u.version for u in got]
    assert versions == sorted(set(versions))
    # A coalesced update's old value is the one delivered before it.
    for before, after in zip(got, got[1:]):
        assert after.old_value == before.value, [(u.update_type, u.version, u.old_value, u.value) for u in got]


def test_debounce_flushes_a_closed_window_before_the_next_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # Updates read in one batch can span the end of a window: the change
    # pending in it comes first, then the next one opens a new window.
    from datetime import datetime, timezone

    from snakepit_bridge.variables import Variable

    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])  # no event loop runs here

    async def no_bridge() -> Any:
        raise AssertionError("not connected in this test")

    watch = watching.AsyncVariableWatch(no_bridge, "s", ["x"], debounce_ms=100)

    def change(version: int) -> VariableUpdate:
        variable = Variable(id="var_1", name="x", type="integer", value=version - 1, version=version)
        return VariableUpdate(
            "value_change", "var_1", variable, version - 2, "client", {}, datetime.now(timezone.utc), version
        )

    watch._offer(change(2))  # leading edge: at once, opens a window to 100.1
    watch._offer(change(3))  # pending
    watch._offer(change(4))  # pending, replaces 3 and keeps its old value
    clock[0] = 100.2  # the window closed; the next change comes in the same batch
    watch._offer(change(5))
    watch._flush_due(clock[0])
    delivered = [(u.version, u.old_value, u.value) for u in watch._ready]
    assert delivered == [(2, 0, 1), (4, 1, 3)]
    assert [(u.version, u.old_value) for u in watch._pending.values()] == [(5, 3)]
    clock[0] = 100.4
    watch._flush_due(clock[0])
    assert [(u.version, u.old_value, u.value) for u in watch._ready][-1] == (5, 3, 4)
    watch.close()


def test_debounce_is_per_variable(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> List[Tuple[str, Any]]:
        async with connected() as session:
            await session.set_variable("a", 0)
            await session.set_variable("b", 0)
            got: List[Tuple[str, Any]] = []
            async with session.watch_variables(["a", "b"], debounce_ms=150, include_initial=False) as updates:
                await updates.wait_ready(timeout=5)
                for i in range(1, 6):
                    bridge.set_variables(session_id, {"a": i, "b": -i})
                first = await next_update(updates)
                got.append((first.variable_name, first.value))
                while len(got) < 4:
                    update = await next_update(updates)
                    got.append((update.variable_name, update.value))
            return got

    got = run(main())
    assert sorted(got[:2]) == [("a", 1), ("b", -1)]  # leading edge, each variable
    assert sorted(got[2:]) == [("a", 5), ("b", -5)]  # trailing edge, each variable


def test_reconnect_resyncs_without_duplicates(
    bridge_server: BridgeServer, bridge: Bridge, session_id: str, proxy: TcpProxy
) -> None:
    errors: List[BaseException] = []

    async def main() -> List[VariableUpdate]:
        # Everything of this session goes through the relay; the writes of "someone else" go direct.
        async with SessionContext.connect(proxy.address, session_id, token=bridge_server.token) as session:
            await session.set_variable("x", 0)
            await session.set_variable("y", "a")
            got: List[VariableUpdate] = []
            watch = session.watch_variables(["x", "y"], on_error=errors.append, reconnect_delay_ms=20)
            async with watch:
                got += [await next_update(watch), await next_update(watch)]
                bridge.set_variable(session_id, "x", 1)
                got.append(await next_update(watch))
                assert watch.connections == 1

                # Cut: the watch fails, retries while the relay is down, and misses x=2, x=3.
                proxy.stop()
                await eventually(lambda: len(errors) >= 2, what="failed reconnection attempts")
                bridge.set_variable(session_id, "x", 2)
                bridge.set_variable(session_id, "x", 3)
                proxy.start()
                resynced = await next_update(watch)
                got.append(resynced)
                assert (resynced.variable_name, resynced.value, resynced.old_value) == ("x", 3, 1)
                assert resynced.resync and resynced.update_type == "value_change" and resynced.version == 4
                assert watch.connections == 2

                # Cut again with nothing changed: the resync delivers nothing (y and x already seen).
                count = len(errors)
                proxy.stop()
                await eventually(lambda: len(errors) > count, what="the second cut noticed")
                proxy.start()
                await eventually(lambda: watch.connections == 3, what="second reconnection")
                bridge.set_variable(session_id, "y", "b")
                after = await next_update(watch)
                got.append(after)
                assert (after.variable_name, after.value, after.resync) == ("y", "b", False)
            return got

    got = run(main())
    keys = [(u.variable_name, u.version) for u in got]
    assert len(keys) == len(set(keys)), keys
    for name in ("x", "y"):
        versions = [v for n, v in keys if n == name]
        assert versions == sorted(versions)
    assert errors and all(isinstance(e, BridgeError) for e in errors)
    assert _wait_sync(lambda: watchers(bridge, session_id) == 0)


def test_without_reconnect_a_cut_raises(
    bridge_server: BridgeServer, bridge: Bridge, session_id: str, proxy: TcpProxy
) -> None:
    errors: List[BaseException] = []

    async def main() -> None:
        async with SessionContext.connect(proxy.address, session_id, token=bridge_server.token) as session:
            await session.set_variable("x", 0)
            watch = session.watch_variables(["x"], reconnect=False, on_error=errors.append)
            assert (await next_update(watch)).is_initial
            proxy.stop()
            with pytest.raises(BridgeError) as info:
                await next_update(watch)
            assert errors == [info.value]
            assert watch.closed

    run(main())


def test_reconnection_gives_up_after_ten_attempts(
    bridge_server: BridgeServer, bridge: Bridge, session_id: str, proxy: TcpProxy
) -> None:
    errors: List[BaseException] = []

    async def main() -> None:
        async with SessionContext.connect(proxy.address, session_id, token=bridge_server.token) as session:
            await session.set_variable("x", 0)
            # Delays 1, 2, 4, ..., 512 ms: about a second in all.
            watch = session.watch_variables(["x"], reconnect_delay_ms=1, on_error=errors.append)
            assert (await next_update(watch)).is_initial
            proxy.stop()
            started = time.monotonic()
            with pytest.raises(BridgeError) as info:
                await next_update(watch, timeout=20)
            elapsed = time.monotonic() - started
            assert elapsed >= 1.0
            # The break, then 10 failed attempts; the last error is also raised.
            assert len(errors) == 1 + watching.MAX_RECONNECT_ATTEMPTS
            assert errors[-1] is info.value

    run(main())


def test_the_end_of_the_session_raises_session_ended(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("x", 0)
            values = []
            with pytest.raises(SessionEnded):
                async for update in session.watch_variables(["x"], debounce_ms=200):
                    values.append(update.value)
                    if update.is_initial:
                        bridge.set_variable(session_id, "x", 1)
                        bridge.set_variable(session_id, "x", 2)  # debounced: pending when the session ends
                        bridge.delete_session(session_id)
            assert values[0] == 0 and values[-1] == 2  # the pending final value came before the end

    run(main())


def test_an_overflow_resyncs(connected: Any, bridge: Bridge, session_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny local buffer, so a consumer that does not read stops the reader and the node's buffer overflows.
    monkeypatch.setattr(watching, "_LOCAL_BUFFER", 1)
    errors: List[BaseException] = []

    async def main() -> List[VariableUpdate]:
        async with connected() as session:
            await session.set_variable("big", "")
            got: List[VariableUpdate] = []
            watch = session.watch_variables(["big"], max_buffered=2, on_error=errors.append)
            async with watch:
                got.append(await next_update(watch))
                chunk = "z" * 16384

                def flood() -> None:
                    for i in range(1, 401):
                        bridge.set_variable(session_id, "big", f"{i}:{chunk}")

                await asyncio.to_thread(flood)
                while not got[-1].value.startswith("400:"):
                    got.append(await next_update(watch, timeout=10))
            return got

    got = run(main(), timeout=60)
    assert any(isinstance(e, WatchOverflow) for e in errors), errors
    versions = [u.version for u in got]
    assert versions == sorted(set(versions))
    assert got[-1].version == 401
    assert any(u.resync for u in got)


def test_break_and_cancellation_close_the_server_stream(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("x", 0)

            async for _ in session.watch_variables(["x"]):
                assert watchers(bridge, session_id) == 1
                break
            await eventually(lambda: watchers(bridge, session_id) == 0, what="closed after break")

            started = asyncio.Event()

            async def consume() -> None:
                async for _ in session.watch_variables(["x"]):
                    started.set()

            task = asyncio.ensure_future(consume())
            await asyncio.wait_for(started.wait(), 5)
            assert watchers(bridge, session_id) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: watchers(bridge, session_id) == 0, what="closed after cancellation")

            watch = session.watch_variables(["x"])
            await next_update(watch)
            await watch.aclose()
            assert watchers(bridge, session_id) == 0 or await _eventually_zero(bridge, session_id)
            with pytest.raises(StopAsyncIteration):
                await watch.__anext__()

            # Leaving connect() closes the watches still open.
            left_open = session.watch_variables(["x"])
            await next_update(left_open)
        await eventually(lambda: watchers(bridge, session_id) == 0, what="closed on leaving connect()")
        assert left_open.closed

    run(main())


async def _eventually_zero(bridge: Bridge, session_id: str) -> bool:
    await eventually(lambda: watchers(bridge, session_id) == 0, what="no watcher")
    return True


def _wait_sync(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_tools_watch_through_session_context_aio(bridge_server: BridgeServer, bridge: Bridge, session_id: str) -> None:
    bridge.create_session(session_id)
    bridge.register_variable(session_id, "lr", "float", 0.1)
    set_process_bridge(Bridge(bridge_server.address, bridge_server.token, source="python"))
    context = SessionContext(session_id=session_id, worker_id="w")

    async def main() -> List[Any]:
        aio = context.aio
        assert context.aio is aio  # one object per call: its cache lives with the call
        seen = []
        async for update in aio.watch_variables(["lr"]):
            seen.append(update.value)
            if update.is_initial:
                await aio.set_variable("lr", 0.2)
            else:
                break
        await aio.set_variable("fresh", [1, 2])  # created, as with connect()
        return seen

    try:
        assert run(main()) == [0.1, 0.2]
    finally:
        set_process_bridge(None)
    assert bridge.get_variable(session_id, "lr").source == "python"
    assert bridge.get_variable(session_id, "fresh").type == "json"


# -- reactive helpers ----------------------------------------------------------------------


def test_watch_for_condition_met(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("temperature", 15.0)
            await session.set_variable("pressure", 1000.0)

            async def heat() -> None:
                await eventually(lambda: watchers(bridge, session_id) == 1, what="condition watch")
                for t in (18.0, 22.0, 26.0, 30.0):
                    await session.set_variable("temperature", t)

            heater = asyncio.ensure_future(heat())
            values = await watch_for_condition(
                session, ["temperature", "pressure"], lambda v: v["temperature"] > 25, timeout=10
            )
            await heater
            assert values == {"temperature": 26.0, "pressure": 1000.0}
            await eventually(lambda: watchers(bridge, session_id) == 0, what="condition watch closed")

            # Already true: returns at once.
            now = await watch_for_condition(session, ["pressure"], lambda v: v["pressure"] >= 1000, timeout=5)
            assert now == {"pressure": 1000.0}

    run(main())


def test_watch_for_condition_times_out(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.set_variable("temperature", 15.0)
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await watch_for_condition(session, ["temperature"], lambda v: v["temperature"] > 100, timeout=0.3)
            assert time.monotonic() - started < 3
            await eventually(lambda: watchers(bridge, session_id) == 0, what="watch closed after timeout")

    run(main())


def test_reactive_variable_round_trip(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            changes: List[Tuple[Any, Any]] = []
            temperature = ReactiveVariable(session, "temperature", 20.0)  # missing: registered with 20.0
            temperature.on_change(lambda old, new: changes.append((old, new)))
            await temperature.start()
            assert temperature.value == 20.0 and temperature.version == 1
            assert bridge.get_variable(session_id, "temperature").type == "float"
            assert changes == []  # the node's value equals the initial one

            bridge.set_variable(session_id, "temperature", 24.0)  # someone else writes
            await eventually(lambda: temperature.value == 24.0, what="remote change seen")
            assert changes == [(20.0, 24.0)]

            temperature.value = 26.5  # writes the session variable
            await temperature.flush()
            assert bridge.get_variable(session_id, "temperature").value == 26.5
            assert temperature.value == 26.5 and temperature.version == 3
            assert changes == [(20.0, 24.0), (24.0, 26.5)]  # once, not again for the watch's echo

            temperature.value = "not a number"  # refused by the node: reported, nothing changes
            await temperature.flush()
            assert isinstance(temperature.last_error, InvalidVariable)
            assert temperature.value == 26.5

            assert watchers(bridge, session_id) == 1
            await temperature.aclose()
            await eventually(lambda: watchers(bridge, session_id) == 0, what="closed")
            bridge.set_variable(session_id, "temperature", 30.0)
            assert changes[-1] == (24.0, 26.5)

    run(main())


def test_variable_group_round_trip(connected: Any, bridge: Bridge, session_id: str) -> None:
    async def main() -> None:
        async with connected() as session:
            await session.register_variable("humidity", "float", 50.0, constraints={"min": 0, "max": 100})
            sensors = VariableGroup(session)
            temp = sensors.add_variable("temperature", 20.0)
            humidity = sensors.add_variable("humidity")
            seen: List[Tuple[str, Any, Any]] = []
            sensors.on_any_change(lambda name, old, new: seen.append((name, old, new)))
            member_changes: List[Tuple[Any, Any]] = []
            humidity.on_change(lambda old, new: member_changes.append((old, new)))
            await sensors.start()
            assert sensors.values == {"temperature": 20.0, "humidity": 50.0}
            assert watchers(bridge, session_id) == 1  # one stream for the group
            # humidity had no local value: its arrival is a change; temperature's equals the local one.
            assert seen == [("humidity", None, 50.0)] and member_changes == [(None, 50.0)]
            seen.clear()
            member_changes.clear()

            written = await sensors.update_many({"temperature": 25.0, "humidity": 60.0})
            assert {k: v.version for k, v in written.items()} == {"temperature": 2, "humidity": 2}
            assert sensors.values == {"temperature": 25.0, "humidity": 60.0}
            assert sorted(seen) == [("humidity", 50.0, 60.0), ("temperature", 20.0, 25.0)]

            with pytest.raises(InvalidVariable):  # atomic: neither is written
                await sensors.update_many({"temperature": 26.0, "humidity": 160.0})
            found, _ = bridge.get_variables(session_id, ["temperature", "humidity"])
            assert [(v.value, v.version) for v in found] == [(25.0, 2), (60.0, 2)]

            bridge.set_variable(session_id, "humidity", 65.0)  # someone else writes
            await eventually(lambda: humidity.value == 65.0, what="remote change seen by the group")
            assert seen[-1] == ("humidity", 60.0, 65.0)
            assert member_changes == [(50.0, 60.0), (60.0, 65.0)]
            assert temp.value == 25.0

            # A member added later joins the watch; nobody hears old news again.
            count = len(seen)
            pressure = sensors.add_variable("pressure", 1013.0)
            await sensors.start()
            assert pressure.value == 1013.0 and len(seen) == count
            await eventually(lambda: watchers(bridge, session_id) == 1, what="one stream after the restart")

            await sensors.aclose()
            await eventually(lambda: watchers(bridge, session_id) == 0, what="closed")

    run(main())
