"""The outside client (:mod:`snakepit_bridge.client`) against a real bridge
server without pools (``target/release/snakepit-bridge``): connecting,
versions, the node's refusals and the client's own input checks. Calls that
reach a pool's workers are tested from Elixir (``test/snakepit/python_client_test.exs``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from conftest import BridgeServer

from snakepit_bridge.client import ErrorType, SnakepitClient, SnakepitError
from snakepit_bridge.limits import PROTOCOL_VERSION


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_connects_and_reads_the_versions(bridge_server: BridgeServer) -> None:
    async def main() -> Any:
        async with SnakepitClient(bridge_server.address, token=bridge_server.token) as client:
            return await client.get_version()

    version = run(main())
    assert version.protocol_version == PROTOCOL_VERSION
    assert version.bridge_version
    # This node runs no pools.
    assert version.pools == {}


def test_the_token_comes_from_the_environment(bridge_server: BridgeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAKEPIT_TOKEN", bridge_server.token)

    async def main() -> Any:
        async with SnakepitClient(bridge_server.address) as client:
            return await client.get_version()

    assert run(main()).protocol_version == PROTOCOL_VERSION


def test_a_wrong_token_is_unauthenticated(bridge_server: BridgeServer) -> None:
    async def main() -> None:
        async with SnakepitClient(bridge_server.address, token="wrong") as client:
            await client.execute("add", {"a": 1})

    with pytest.raises(SnakepitError) as caught:
        run(main())
    assert caught.value.error_type is ErrorType.UNAUTHENTICATED


def test_nothing_listening_is_unavailable_after_the_retries() -> None:
    async def main() -> None:
        await SnakepitClient("127.0.0.1:1", token="t", timeout=1.0, connect_attempts=2).connect()

    started = time.monotonic()
    with pytest.raises(SnakepitError) as caught:
        run(main())
    assert caught.value.error_type is ErrorType.UNAVAILABLE
    assert time.monotonic() - started < 10


def test_refusals_by_the_node_and_by_the_client(bridge_server: BridgeServer) -> None:
    async def attempt(**call: Any) -> SnakepitError:
        async with SnakepitClient(bridge_server.address, token=bridge_server.token) as client:
            try:
                await client.execute("add", **call)
            except SnakepitError as error:
                return error
        raise AssertionError("not refused")

    # This node runs no pools.
    error = run(attempt(params={"a": 1}))
    assert (error.error_type, error.reason) == (ErrorType.POOL, "unknown_pool")
    # Checked before anything is sent.
    error = run(attempt(params={"a": float("nan")}))
    assert (error.error_type, error.reason) == (ErrorType.VALIDATION, "invalid_parameter")
    error = run(attempt(params={"a": object()}))
    assert error.reason == "invalid_parameter"
    error = run(attempt(binary={"blob": 42}))
    assert (error.error_type, error.reason) == (ErrorType.VALIDATION, "invalid_binary_parameter")
    for timeout in (1e300, -1.0, 0.0, float("nan")):
        assert run(attempt(params={"a": 1}, timeout=timeout)).error_type is ErrorType.VALIDATION
    error = run(attempt(params={"a": 1}, affinity="sticky"))
    assert error.error_type is ErrorType.VALIDATION


def test_streams_are_refused_the_same_way(bridge_server: BridgeServer) -> None:
    async def main() -> None:
        async with SnakepitClient(bridge_server.address, token=bridge_server.token) as client:
            async for _ in client.stream("stream_numbers", {"count": 3}):
                raise AssertionError("no chunk expected")

    with pytest.raises(SnakepitError) as caught:
        run(main())
    assert caught.value.reason == "unknown_pool"


def test_the_sync_facade(bridge_server: BridgeServer) -> None:
    with SnakepitClient.sync(bridge_server.address, token=bridge_server.token) as client:
        assert client.get_version().protocol_version == PROTOCOL_VERSION
        with pytest.raises(SnakepitError) as caught:
            client.execute("add", {"a": 1})
        assert caught.value.reason == "unknown_pool"
        with pytest.raises(SnakepitError):
            list(client.stream("stream_numbers"))


def test_calls_need_a_connection() -> None:
    with pytest.raises(SnakepitError) as caught:
        run(SnakepitClient("127.0.0.1:1", token="t").execute("add"))
    assert caught.value.error_type is ErrorType.UNAVAILABLE


def test_a_node_of_another_protocol_is_a_version_mismatch(
    bridge_server: BridgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import snakepit_bridge.client as client_module

    # The node decides: it answers that it does not speak this version.
    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", "0")

    async def main() -> None:
        async with SnakepitClient(bridge_server.address, token=bridge_server.token):
            raise AssertionError("connected")

    with pytest.raises(SnakepitError) as caught:
        run(main())
    assert caught.value.error_type is ErrorType.VERSION_MISMATCH
    assert '"0"' in caught.value.message
