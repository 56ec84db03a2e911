"""Run tools on a Snakepit node from a program outside its pools.

A Python service, a notebook or a script reaches the node's bridge (its
address is ``Snakepit.Bridge.address/0``, its token ``Snakepit.Bridge.token/0``
or the ``SNAKEPIT_TOKEN`` environment variable) and runs the tools of the
node's pools, with the pools' own queue, session affinity and limits::

    async with SnakepitClient("127.0.0.1:50051", token=token) as client:
        result = await client.execute("add", {"a": 5, "b": 3})
        print(result.value, result.execution_time_ms, result.worker_id)
        async for chunk in client.stream("stream_progress", {"steps": 5}):
            print(chunk.data, chunk.is_final)

Scripts use the sync facade, a thin layer over the same async core::

    with SnakepitClient.sync("127.0.0.1:50051", token=token) as client:
        print(client.execute("add", {"a": 1, "b": 2}).value)

The async core awaits the native extension's coroutines: no thread is
blocked per call or per stream. Breaking out of a stream, cancelling the
task or a timeout ends the call on the node, which stops the Python tool.
Every failure is a :class:`SnakepitError` whose :class:`ErrorType` says what
kind it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import os
from types import TracebackType
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import background
from .environment import environment_token
from .limits import PROTOCOL_VERSION

__all__ = [
    "SnakepitClient",
    "SyncSnakepitClient",
    "SnakepitError",
    "ErrorType",
    "ExecuteResult",
    "Chunk",
    "Version",
    "Pool",
    "Tool",
    "Parameter",
]

#: The longest timeout a call may have, in seconds (a year).
_MAX_TIMEOUT = 365.0 * 24 * 3600

T = TypeVar("T")


class ErrorType(enum.Enum):
    """What kind of failure a :class:`SnakepitError` is."""

    #: The request was refused: bad parameters, unknown tool or affinity.
    VALIDATION = "validation"
    #: The tool raised; ``python_type`` and ``traceback`` say what.
    PYTHON = "python"
    #: The call's time ran out (waiting for a worker, or running).
    TIMEOUT = "timeout"
    #: No worker could be had: unknown pool, saturated, busy, gone.
    POOL = "pool"
    #: The node refused the token.
    UNAUTHENTICATED = "unauthenticated"
    #: The node could not be reached, or went away.
    UNAVAILABLE = "unavailable"
    #: The node speaks another protocol version.
    VERSION_MISMATCH = "version_mismatch"
    #: The call was cancelled.
    CANCELLED = "cancelled"
    #: Anything else.
    INTERNAL = "internal"


class SnakepitError(Exception):
    """A call to the node failed.

    Attributes:
        error_type: What kind of failure (:class:`ErrorType`).
        message: A readable sentence; also ``str(error)``.
        reason: The node's machine-readable reason (``"unknown_pool"``,
            ``"invalid_parameter"``, ...), or ``""``.
        python_type: For :attr:`ErrorType.PYTHON`, the exception's type name.
        traceback: For :attr:`ErrorType.PYTHON`, the formatted traceback.
    """

    def __init__(
        self, error_type: ErrorType, message: str, reason: str = "", python_type: str = "", traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.reason = reason
        self.python_type = python_type
        self.traceback = traceback

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"SnakepitError({self.error_type}, {self.message!r}, reason={self.reason!r})"


@dataclasses.dataclass(frozen=True)
class ExecuteResult:
    """The answer of :meth:`SnakepitClient.execute`.

    Attributes:
        value: The result (``None`` when the tool returned bytes).
        binary: The bytes the tool returned, else ``None``.
        metadata: The answer's metadata.
        execution_time_ms: From the checkout of a worker to the answer.
        worker_id: The worker that ran the tool.
    """

    value: Any
    binary: Optional[bytes]
    metadata: Dict[str, str]
    execution_time_ms: int
    worker_id: str


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk of a stream.

    Attributes:
        data: What the tool yielded (``None`` for bytes, and for the final
            chunk the node adds when the tool marks none final).
        binary: The bytes the tool yielded, else ``None``.
        is_final: The last chunk.
        metadata: The chunk's metadata; the final chunk's holds
            ``execution_time_ms``, ``tool_type`` and ``worker_id``.
    """

    data: Any
    binary: Optional[bytes]
    is_final: bool
    metadata: Dict[str, str]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A tool's parameter: its annotation as written, and its default's JSON."""

    name: str
    type: str
    required: bool
    default_json: str


@dataclasses.dataclass(frozen=True)
class Tool:
    """A tool of a pool's adapter."""

    name: str
    description: str
    supports_streaming: bool
    parameters: List[Parameter]


@dataclasses.dataclass(frozen=True)
class Pool:
    """A pool of the node, with its adapter's tools (``error`` says why they
    could not be read, when they could not)."""

    name: str
    size: int
    adapter: str
    tools: Dict[str, Tool]
    error: str


@dataclasses.dataclass(frozen=True)
class Version:
    """What the node offers (:meth:`SnakepitClient.get_version`): its
    versions, and its pools with their tools."""

    protocol_version: str
    bridge_version: str
    runtime_version: str
    pools: Dict[str, Pool]


# gRPC status codes (and the node's reasons) -> error types.
_POOL_REASONS = frozenset(
    {"unknown_pool", "pool_saturated", "worker_busy", "session_worker_unavailable", "not_ready", "worker_exited"}
)
_BY_CODE = {
    "INVALID_ARGUMENT": ErrorType.VALIDATION,
    "NOT_FOUND": ErrorType.VALIDATION,
    "DEADLINE_EXCEEDED": ErrorType.TIMEOUT,
    "RESOURCE_EXHAUSTED": ErrorType.POOL,
    "UNAUTHENTICATED": ErrorType.UNAUTHENTICATED,
    "UNAVAILABLE": ErrorType.UNAVAILABLE,
    "CANCELLED": ErrorType.CANCELLED,
}


def _from_native(error: BaseException) -> SnakepitError:
    """A :class:`SnakepitError` from the extension's ``BridgeError``."""
    code = str(getattr(error, "code", ""))
    reason = str(getattr(error, "reason", ""))
    message = str(getattr(error, "message", error))
    error_type = ErrorType.POOL if reason in _POOL_REASONS else _BY_CODE.get(code, ErrorType.INTERNAL)
    return SnakepitError(error_type, message, reason)


async def _native(call: Awaitable[T]) -> T:
    """Await a native call; its ``BridgeError`` becomes a :class:`SnakepitError`."""
    try:
        return await call
    except SnakepitError:
        raise
    except Exception as exc:
        raise _from_native(exc) from None


def _chunk(item: Any) -> Chunk:
    """A native chunk as a :class:`Chunk`; a failure chunk raises."""
    payload, is_final, meta, error = item
    if error is not None:
        raise _tool_error(error)
    data, raw = _decode(payload)
    return Chunk(data, raw, is_final, dict(meta))


def _tool_error(error: Any) -> SnakepitError:
    category, error_type, message, traceback = error
    kind = ErrorType.PYTHON if category == "python" else ErrorType.VALIDATION
    return SnakepitError(kind, f"{error_type}: {message}" if error_type else message, "", error_type, traceback)


def _decode(payload: Any) -> Tuple[Any, Optional[bytes]]:
    if payload is None:
        return None, None
    data, is_raw = payload
    if is_raw:
        return None, bytes(data)
    return json.loads(data), None


def _pool(pool: Any) -> Pool:
    name, size, adapter, tools, error = pool
    return Pool(
        name,
        size,
        adapter,
        {tool[0]: Tool(tool[0], tool[1], tool[2], [Parameter(*parameter) for parameter in tool[3]]) for tool in tools},
        error,
    )


def _parameters(params: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """Each parameter as JSON text; what JSON cannot carry is refused here."""
    encoded: Dict[str, str] = {}
    for key, value in (params or {}).items():
        if not isinstance(key, str):
            raise SnakepitError(ErrorType.VALIDATION, f"parameter names are strings, got {key!r}", "invalid_parameter")
        try:
            encoded[key] = json.dumps(value, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise SnakepitError(ErrorType.VALIDATION, f"parameter {key!r}: {exc}", "invalid_parameter") from None
    return encoded


def _binaries(binary: Optional[Mapping[str, Any]]) -> Dict[str, bytes]:
    out: Dict[str, bytes] = {}
    for key, value in (binary or {}).items():
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SnakepitError(
                ErrorType.VALIDATION,
                f"binary parameter {key!r} must be bytes, got {type(value).__name__}",
                "invalid_binary_parameter",
            )
        out[str(key)] = bytes(value)
    return out


async def _feed(chunks: Any, inputs: Union[Iterable[Any], AsyncIterable[Any]]) -> None:
    """Send ``inputs`` into a duplex call, then end them."""

    async def send(item: Any) -> bool:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return bool(await chunks.send(bytes(item), True))
        try:
            text = json.dumps(item, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise SnakepitError(ErrorType.VALIDATION, f"a duplex input: {exc}", "invalid_parameter") from None
        return bool(await chunks.send(text.encode("utf-8"), False))

    if isinstance(inputs, AsyncIterable):
        async for item in inputs:
            if not await send(item):
                return
    else:
        for item in inputs:
            if not await send(item):
                return
    chunks.end_inputs()


class SnakepitClient:
    """An async client of one node. Use ``async with``, or :meth:`connect`
    and :meth:`close`.

    Args:
        address: The node's bridge, ``host:port``.
        token: The node's token; by default the ``SNAKEPIT_TOKEN`` variable.
        timeout: Default seconds for a call (streams: 300).
        connect_attempts: Tries to connect, with backoff (only connecting and
            :meth:`get_version` are retried: they change nothing on the node).
        tls_ca: For a node serving TLS (one reached beyond its machine): the
            CA certificate that signed the node's, as PEM bytes or a path.
        server_name: The name the node's certificate is for, when it is not
            the address's host.
    """

    def __init__(
        self,
        address: str,
        token: Optional[str] = None,
        *,
        timeout: float = 30.0,
        connect_attempts: int = 3,
        tls_ca: Union[bytes, str, os.PathLike[str], None] = None,
        server_name: Optional[str] = None,
    ) -> None:
        self.address = address
        self._token = token if token is not None else environment_token()
        self.timeout = timeout
        self.connect_attempts = max(1, connect_attempts)
        if tls_ca is None or isinstance(tls_ca, bytes):
            self._tls_ca = tls_ca
        else:
            with open(tls_ca, "rb") as pem:
                self._tls_ca = pem.read()
        self.server_name = server_name
        self._native: Any = None

    def __repr__(self) -> str:
        return f"SnakepitClient({self.address!r})"

    async def connect(self) -> SnakepitClient:
        """Connect, and check that the node speaks this client's protocol.

        Raises:
            SnakepitError: ``UNAVAILABLE`` after the last attempt,
                ``VERSION_MISMATCH`` for another protocol.
        """
        from ._native import NodeClient

        background.register_quiesce()
        delay = 0.1
        for attempt in range(self.connect_attempts):
            try:
                self._native = await NodeClient.connect(
                    self.address, self._token, self.timeout, self._tls_ca, self.server_name
                )
                break
            except Exception as exc:
                if attempt + 1 == self.connect_attempts:
                    raise _from_native(exc) from None
                await asyncio.sleep(delay)
                delay *= 2
        try:
            await self.get_version()
        except SnakepitError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        """Drop this client's connection (calls still running keep theirs
        until they end)."""
        self._native = None

    async def __aenter__(self) -> SnakepitClient:
        return await self.connect()

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

    def _client(self) -> Any:
        if self._native is None:
            raise SnakepitError(ErrorType.UNAVAILABLE, "not connected: use `async with` or connect()")
        return self._native

    async def get_version(self) -> Version:
        """The node's versions and its pools with their tools (retried once
        when the node is unreachable).

        Raises:
            SnakepitError: ``VERSION_MISMATCH`` when the node does not speak
                this client's protocol (the node decides).
        """
        for attempt in (1, 2):
            try:
                described = await self._client().describe(PROTOCOL_VERSION, self.timeout)
                break
            except SnakepitError:
                raise
            except Exception as exc:
                error = _from_native(exc)
                if attempt == 2 or error.error_type is not ErrorType.UNAVAILABLE:
                    raise error from None
        (protocol, bridge, runtime), compatible, why, pools = described
        if not compatible:
            raise SnakepitError(ErrorType.VERSION_MISMATCH, why, "version_mismatch")
        return Version(protocol, bridge, runtime, {pool[0]: _pool(pool) for pool in pools})

    @staticmethod
    def _timeout(timeout: Optional[float]) -> Optional[float]:
        if timeout is None:
            return None
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= _MAX_TIMEOUT:
            raise SnakepitError(
                ErrorType.VALIDATION, f"timeout must be a number of seconds in (0, {_MAX_TIMEOUT}], got {timeout!r}"
            )
        return float(timeout)

    def _call(
        self,
        tool: str,
        params: Optional[Mapping[str, Any]],
        binary: Optional[Mapping[str, Any]],
        pool: Optional[str],
        session_id: Optional[str],
        affinity: Optional[str],
        metadata: Optional[Mapping[str, str]],
        timeout: Optional[float],
    ) -> Dict[str, Any]:
        return {
            "tool": tool,
            "parameters": _parameters(params),
            "binary_parameters": _binaries(binary),
            "pool": pool or "",
            "session_id": session_id or "",
            "affinity": affinity or "",
            "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
            "timeout_s": self._timeout(timeout),
        }

    async def execute(
        self,
        tool: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        binary: Optional[Mapping[str, Any]] = None,
        pool: Optional[str] = None,
        session_id: Optional[str] = None,
        affinity: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ExecuteResult:
        """Run ``tool`` with ``params`` (JSON values) and ``binary`` (bytes)
        on a worker of ``pool`` (the node's ``default`` when ``None``).

        Raises:
            SnakepitError: the tool's exception (``PYTHON``), a refusal, a
                timeout, ...
        """
        call = self._call(
            tool, params, binary, pool, session_id, affinity, metadata, self.timeout if timeout is None else timeout
        )
        result, error, meta, elapsed, worker_id = await _native(self._client().execute(call))
        if error is not None:
            raise _tool_error(error)
        value, raw = _decode(result)
        return ExecuteResult(value, raw, dict(meta), elapsed, worker_id)

    async def stream(
        self,
        tool: str,
        params: Optional[Mapping[str, Any]] = None,
        *,
        binary: Optional[Mapping[str, Any]] = None,
        pool: Optional[str] = None,
        session_id: Optional[str] = None,
        affinity: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Run the streaming tool ``tool``; its chunks, in order, as they
        come. Leaving the loop early ends the call on the node.

        Raises:
            SnakepitError: as :meth:`execute`; a failure after some chunks
                is raised after them.
        """
        call = self._call(tool, params, binary, pool, session_id, affinity, metadata, timeout)
        chunks = await _native(self._client().stream(call))
        try:
            while (item := await _native(chunks.next())) is not None:
                yield _chunk(item)
        finally:
            chunks.close()

    async def duplex(
        self,
        tool: str,
        inputs: Union[Iterable[Any], AsyncIterable[Any]],
        params: Optional[Mapping[str, Any]] = None,
        *,
        pool: Optional[str] = None,
        session_id: Optional[str] = None,
        affinity: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> AsyncGenerator[Chunk, None]:
        """Run the duplex tool ``tool``: ``inputs`` (bytes, or JSON values;
        an iterable or an async iterable, read lazily, only as fast as the
        tool takes them) stream to its ``inputs`` argument while its chunks
        stream back. Leaving the loop early ends the call on the node.

        Raises:
            SnakepitError: as :meth:`stream`; an input JSON cannot carry is a
                ``VALIDATION`` error (the call is ended).
        """
        call = self._call(tool, params, None, pool, session_id, affinity, metadata, timeout)
        chunks = await _native(self._client().duplex(call))
        feeding = asyncio.ensure_future(_feed(chunks, inputs))
        try:
            while True:
                next_chunk = asyncio.ensure_future(chunks.next())
                await asyncio.wait({next_chunk, feeding}, return_when=asyncio.FIRST_COMPLETED)
                if feeding.done() and feeding.exception() is not None and not next_chunk.done():
                    next_chunk.cancel()
                    raise feeding.exception()  # type: ignore[misc]
                item = await _native(next_chunk)
                if item is None:
                    if feeding.done() and not feeding.cancelled() and feeding.exception() is not None:
                        raise feeding.exception()  # type: ignore[misc]
                    return
                yield _chunk(item)
        finally:
            feeding.cancel()
            chunks.close()

    @staticmethod
    def sync(address: str, token: Optional[str] = None, **options: Any) -> SyncSnakepitClient:
        """A blocking client over the same async core (see :class:`SyncSnakepitClient`)."""
        return SyncSnakepitClient(SnakepitClient(address, token, **options))


class SyncSnakepitClient:
    """Blocking calls for scripts: each runs the async client's coroutine on
    the process's background event loop (:mod:`snakepit_bridge.background`).
    Use ``with``."""

    def __init__(self, client: SnakepitClient) -> None:
        self._async = client

    def connect(self) -> SyncSnakepitClient:
        """See :meth:`SnakepitClient.connect`."""
        background.run(self._async.connect)
        return self

    def close(self) -> None:
        """Close the connection."""
        background.run(self._async.close)

    def __enter__(self) -> SyncSnakepitClient:
        return self.connect()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    def get_version(self) -> Version:
        """See :meth:`SnakepitClient.get_version`."""
        return background.run(self._async.get_version)

    def execute(self, tool: str, params: Optional[Mapping[str, Any]] = None, **options: Any) -> ExecuteResult:
        """See :meth:`SnakepitClient.execute`."""
        return background.run(lambda: self._async.execute(tool, params, **options))

    def stream(self, tool: str, params: Optional[Mapping[str, Any]] = None, **options: Any) -> Iterator[Chunk]:
        """See :meth:`SnakepitClient.stream`; leaving the loop early ends the call."""
        chunks = self._async.stream(tool, params, **options)
        return background.iterate(chunks, chunks.aclose)

    def duplex(
        self, tool: str, inputs: Iterable[Any], params: Optional[Mapping[str, Any]] = None, **options: Any
    ) -> Iterator[Chunk]:
        """See :meth:`SnakepitClient.duplex` (``inputs`` is read on the
        background loop's thread); leaving the loop early ends the call."""
        chunks = self._async.duplex(tool, inputs, params, **options)
        return background.iterate(chunks, chunks.aclose)
