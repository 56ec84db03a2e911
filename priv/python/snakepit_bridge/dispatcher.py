"""The :class:`ToolDispatcher`: the object the native gRPC server calls into."""

from __future__ import annotations

import asyncio
import collections.abc
import concurrent.futures
import contextvars
import functools
import inspect
import json
import logging
import threading
from typing import Any, Awaitable, Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

from .base_adapter import BaseAdapter
from .cancellation import CallHandle
from .duplex import AsyncInputs, Inputs, InputSource
from .errors import VALIDATION, ToolFailure
from .records import DescribeDocument
from .serialization import Chunk, encode_chunk, encode_result
from .session_context import SessionContext, _current
from .stream_chunk import StreamChunk
from .tools import ToolInfo
from .universal import RESERVED_PREFIX, EncodedJson, Universal

__all__ = ["ToolDispatcher", "CallHandle"]

logger = logging.getLogger(__name__)

BytesLike = Union[bytes, bytearray, memoryview]

_END = object()  # end-of-stream sentinel
_decode_json = json.JSONDecoder().decode
_SINGLE_VALUES = (str, bytes, bytearray, memoryview, dict, StreamChunk)


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    def get(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    new_loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(target=self._run, args=(new_loop,), name=self._name, daemon=True)
                    self._thread.start()
                    self._loop = new_loop
                loop = self._loop
        return loop

    def is_current_thread(self) -> bool:
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join()


async def _with_session(session: SessionContext, awaitable: Awaitable[Any]) -> Any:
    _current.set(session)
    return await awaitable


def _discard(awaitable: Awaitable[Any]) -> None:
    """Close a coroutine that will never run (avoids "never awaited" warnings)."""
    close = getattr(awaitable, "close", None)
    if inspect.iscoroutine(awaitable) and close is not None:
        close()


async def _cancellable(session: SessionContext, awaitable: Awaitable[Any], handle: CallHandle) -> Any:
    """Await ``awaitable`` as a task that ``handle.cancel()`` cancels."""
    _current.set(session)
    task = asyncio.current_task()
    assert task is not None
    if not handle._start_task(task):
        _discard(awaitable)
        raise handle._error()
    try:
        return await awaitable
    finally:
        handle._end_task()


async def _anext_or_end(agen: collections.abc.AsyncIterator[Any]) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return _END


# Results of these exact types are data: never awaitables, generators or
# chunks. Checking the type first keeps the slower checks (an abstract-class
# check for awaitables) off the path of most calls.
_PLAIN_RESULTS = frozenset({dict, list, tuple, str, int, float, bool, type(None), bytes})


def _context_for(session: SessionContext) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(_current.set, session)
    return ctx


def _takes_inputs(signature: inspect.Signature) -> bool:
    """Whether a tool can receive ``inputs=`` (a parameter of that name, or ``**kwargs``)."""
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            return True
        if param.name == "inputs" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            return True
    return False


def _close_quietly(source: Union[InputSource, Inputs, AsyncInputs]) -> None:
    close = getattr(source, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("error while closing duplex inputs")


def _invalid(tool_name: str, reason: str) -> ToolFailure:
    return ToolFailure(VALIDATION, "InvalidArguments", f"invalid arguments for tool '{tool_name}': {reason}")


def _decode_arguments(
    tool_name: str, arguments_json: Optional[BytesLike], binaries: Optional[Mapping[str, BytesLike]]
) -> Dict[str, Any]:
    raw = bytes(arguments_json) if isinstance(arguments_json, memoryview) else arguments_json
    arguments: Dict[str, Any] = {}
    if raw and not raw.isspace():
        try:
            # Decoding first skips json.loads's encoding detection: the wire
            # carries UTF-8.
            decoded = _decode_json(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw)
        except ValueError as exc:
            raise _invalid(tool_name, f"not valid JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise _invalid(tool_name, f"expected a JSON object, got {type(decoded).__name__}")
        arguments = decoded
    for key, value in (binaries or {}).items():
        if key in arguments:
            raise _invalid(tool_name, f"argument '{key}' given both as JSON and as binary")
        arguments[key] = bytes(value)
    return arguments


class ToolDispatcher:
    """Runs an adapter's tools on behalf of the native gRPC server.

    All methods are thread-safe and may be called concurrently from many
    threads. Sync tools run in the calling thread; coroutines and async
    generators run on one background asyncio loop owned by the dispatcher
    (started on first use, in a daemon thread). During every call the tool
    sees its own :class:`SessionContext` via ``adapter.session_context``.

    A call made with a :class:`CallHandle` (see :meth:`new_call`) can be
    cancelled from another thread with :meth:`CallHandle.cancel`; the call
    then raises :class:`ToolCancelled`. The gRPC server does this when the
    caller goes away or the call's deadline passes.

    Failures are raised as :class:`ToolFailure`.

    Duplex calls (inputs streamed in while outputs stream out) are streaming
    calls with an input source: ``open_stream(..., inputs=source)``.

    Args:
        adapter: The adapter whose tools are served.
        worker_id: Id of this worker, reported in ``describe_json`` and in
            each call's :class:`SessionContext`.
        universal: Serves the universal call's operations (tool names
            starting with ``snakepit.``; see :mod:`snakepit_bridge.universal`);
            by default one that allows every module.
    """

    def __init__(self, adapter: BaseAdapter, worker_id: str, universal: Optional[Universal] = None) -> None:
        self.adapter = adapter
        self.worker_id = worker_id
        self.universal = universal or Universal()
        self.tools: Dict[str, ToolInfo] = adapter.get_tools()
        self._fallback: Optional[Callable[..., Any]] = getattr(adapter, "execute_tool", None)
        self._loop = _LoopThread(f"snakepit-asyncio-{worker_id}")

    # -- public interface -------------------------------------------------

    def describe_json(self) -> bytes:
        """Describe the adapter and its tools as UTF-8 JSON.

        Shape: :class:`~snakepit_bridge.records.DescribeDocument` (``adapter``
        is ``"module.Class"``), with tools sorted by name.
        """
        cls = type(self.adapter)
        document: DescribeDocument = {
            "adapter": f"{cls.__module__}.{cls.__qualname__}",
            "worker_id": self.worker_id,
            "tools": [
                {
                    "name": info.name,
                    "description": info.description,
                    "supports_streaming": info.supports_streaming,
                    "parameters": [
                        {"name": p.name, "type": p.type, "required": p.required, "default_json": p.default_json}
                        for p in info.parameters
                    ],
                }
                for _, info in sorted(self.tools.items())
            ],
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def new_call(self, timeout: Optional[float] = None) -> CallHandle:
        """Create the :class:`CallHandle` of one upcoming call.

        Args:
            timeout: Seconds the caller allows from now (exposed to the tool as
                ``session_context.deadline``), or ``None`` for no deadline.
        """
        return CallHandle(timeout)

    def call(
        self,
        tool_name: str,
        arguments_json: BytesLike,
        binaries: Mapping[str, BytesLike],
        session_id: str,
        metadata: Mapping[str, str],
        handle: Optional[CallHandle] = None,
    ) -> Tuple[bytes, bool, Dict[str, str]]:
        """Run a unary tool call.

        Args:
            tool_name: Tool to run.
            arguments_json: UTF-8 JSON object of keyword arguments (empty = ``{}``).
            binaries: Extra keyword arguments passed to the tool as ``bytes``.
            session_id: Session of the call.
            metadata: Request metadata, exposed as ``session_context.metadata``.
            handle: Lets another thread cancel the call (see :meth:`new_call`);
                its deadline is exposed to the tool.

        Returns:
            ``(payload, is_raw, metadata)``: ``payload`` is the raw result when
            the tool returned bytes-like (``is_raw=True``), else compact UTF-8
            JSON (``is_raw=False``). ``metadata`` is empty unless the tool
            returned a :class:`StreamChunk`, whose ``data``/``metadata`` are used.

        Raises:
            ToolFailure: ``validation`` for unknown tools, bad arguments or a
                streaming-only tool; ``python`` for exceptions raised by the
                tool and unencodable results.
            ToolCancelled: ``handle`` was cancelled before the tool finished.
        """
        handle = handle if handle is not None else CallHandle(interruptible=False)
        try:
            invoke, session, _ = self._prepare(
                tool_name, arguments_json, binaries, session_id, metadata, handle, stream=False
            )
            try:
                result = handle._run_sync(_context_for(session).run, invoke)
                plain = type(result) in _PLAIN_RESULTS
                if not plain and inspect.isawaitable(result):
                    result = self._await(result, session, handle)
                    plain = type(result) in _PLAIN_RESULTS
            except ToolFailure:
                raise
            except Exception as exc:
                raise ToolFailure.from_exception(exc) from exc
            if not plain:
                if isinstance(result, EncodedJson):
                    return bytes(result), False, {}
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    self._close_stream_result(result, session)
                    raise self._stream_only(tool_name)
                if isinstance(result, StreamChunk):
                    payload, is_raw, _, chunk_metadata = encode_chunk(result)
                    return payload, is_raw, chunk_metadata
            payload, is_raw = encode_result(result)
            return payload, is_raw, {}
        finally:
            handle._finish()

    def open_stream(
        self,
        tool_name: str,
        arguments_json: BytesLike,
        binaries: Mapping[str, BytesLike],
        session_id: str,
        metadata: Mapping[str, str],
        handle: Optional[CallHandle] = None,
        inputs: Optional[InputSource] = None,
    ) -> Iterator[Chunk]:
        """Start a streaming tool call, or a duplex one when ``inputs`` is given.

        Unknown tools and bad arguments raise :class:`ToolFailure` here,
        eagerly. Otherwise returns a generator yielding
        ``(payload, is_raw, is_final, metadata)`` per chunk; the tool itself
        only starts running on the first ``next()``. Exceptions raised by the
        tool surface from ``next()`` as ``ToolFailure("python", ...)``.
        Calling ``close()`` on the returned generator closes the tool's (async)
        generator so its ``finally`` blocks run; call it from the thread
        driving ``next()`` or between ``next()`` calls, never concurrently.

        ``handle.cancel()`` (see :meth:`new_call`) may be called from any
        thread at any time: a ``next()`` in progress is interrupted (the
        tool's generator sees :class:`ToolCancelled`, or ``CancelledError``
        for an async generator) and raises :class:`ToolCancelled`, as does
        every later ``next()``; ``close()`` it afterwards as usual.

        A tool result that is not a generator is streamed too: an iterable
        (other than str/bytes/dict/StreamChunk) yields one chunk per item, any
        other value becomes a single final chunk.

        Duplex calls: with ``inputs`` (an :class:`~snakepit_bridge.duplex.InputSource`
        of raw ``(data, is_raw)`` inputs), the tool gets the decoded inputs
        as its ``inputs`` keyword argument: an
        :class:`~snakepit_bridge.duplex.Inputs` iterator for a sync tool, an
        :class:`~snakepit_bridge.duplex.AsyncInputs` async iterator for a
        coroutine function or async generator (see :mod:`snakepit_bridge.duplex`).
        A cancel wakes a tool waiting for an input (through ``inputs.close()``);
        the source is closed when the call ends. A tool without an ``inputs``
        parameter (or ``**kwargs``), or an ``inputs`` argument in
        ``arguments_json``/``binaries``, raises ``ToolFailure("validation")``.
        """
        handle = handle if handle is not None else CallHandle(interruptible=False)
        try:
            invoke, session, wrapped = self._prepare(
                tool_name, arguments_json, binaries, session_id, metadata, handle, stream=True, inputs=inputs
            )
        except BaseException:
            handle._finish()
            if inputs is not None:
                _close_quietly(inputs)
            raise
        return self._stream(invoke, session, handle, wrapped)

    def shutdown(self) -> None:
        """Stop the background event loop (if started) and release every ref.
        Mainly for tests and embedding."""
        self._loop.stop()
        self.universal.close()

    # -- internals --------------------------------------------------------

    def _prepare(
        self,
        tool_name: str,
        arguments_json: BytesLike,
        binaries: Mapping[str, BytesLike],
        session_id: str,
        metadata: Mapping[str, str],
        handle: CallHandle,
        *,
        stream: bool,
        inputs: Optional[InputSource] = None,
    ) -> Tuple[Callable[[], Any], SessionContext, Union[Inputs, AsyncInputs, None]]:
        if tool_name.startswith(RESERVED_PREFIX):
            return self._prepare_operation(tool_name, arguments_json, binaries, session_id, metadata, handle, stream)
        info = self.tools.get(tool_name)
        if info is None and self._fallback is None:
            available = ", ".join(sorted(self.tools)) or "none"
            raise ToolFailure(VALIDATION, "UnknownTool", f"unknown tool '{tool_name}' (available: {available})")
        if info is not None and info.is_stream_only and not stream:
            raise self._stream_only(tool_name)
        if inputs is not None and info is not None and not _takes_inputs(info.signature):
            raise ToolFailure(
                VALIDATION,
                "NotDuplexTool",
                f"tool '{tool_name}' has no 'inputs' parameter, so it cannot be called with streamed inputs",
            )
        arguments = _decode_arguments(tool_name, arguments_json, binaries)
        wrapped: Union[Inputs, AsyncInputs, None] = None
        if inputs is not None:
            if "inputs" in arguments:
                raise _invalid(tool_name, "'inputs' is the stream of inputs; it cannot also be passed as an argument")
            func = info.func if info is not None else self._fallback
            is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            wrapped = AsyncInputs(inputs, handle) if is_async else Inputs(inputs, handle)
            arguments["inputs"] = wrapped
        session = self._session(tool_name, session_id, metadata, handle)
        if info is None:
            assert self._fallback is not None
            invoke: Callable[[], Any] = functools.partial(self._fallback, tool_name, arguments, session)
        else:
            problem = info.keyword_error(arguments)
            if problem is not None:
                raise _invalid(tool_name, problem)
            invoke = functools.partial(info.func, **arguments)
        if wrapped is not None:
            # A cancel must wake a tool that waits for its next input: the
            # interrupt cannot reach a thread blocked outside Python.
            handle._on_cancel(wrapped.close)
        return invoke, session, wrapped

    def _prepare_operation(
        self,
        tool_name: str,
        arguments_json: BytesLike,
        binaries: Mapping[str, BytesLike],
        session_id: str,
        metadata: Mapping[str, str],
        handle: CallHandle,
        stream: bool,
    ) -> Tuple[Callable[[], Any], SessionContext, None]:
        """A universal-call operation, run like a unary tool."""
        if not self.universal.knows(tool_name):
            raise ToolFailure(VALIDATION, "UnknownTool", f"unknown operation '{tool_name}'")
        if stream:
            raise ToolFailure(VALIDATION, "NotStreaming", f"'{tool_name}' is not a streaming operation")
        arguments = _decode_arguments(tool_name, arguments_json, binaries)
        session = self._session(tool_name, session_id, metadata, handle)

        def awaiter(awaitable: Awaitable[Any]) -> Any:
            return self._await(awaitable, session, handle)

        invoke = functools.partial(self.universal.run, tool_name, arguments, session_id or "", awaiter, handle.deadline)
        return invoke, session, None

    def _session(
        self, tool_name: str, session_id: str, metadata: Mapping[str, str], handle: CallHandle
    ) -> SessionContext:
        return SessionContext(
            session_id or "",
            self.worker_id,
            dict(metadata or {}),
            deadline=handle.deadline,
            tool=tool_name,
            _handle=handle,
        )

    @staticmethod
    def _stream_only(tool_name: str) -> ToolFailure:
        return ToolFailure(
            VALIDATION, "StreamingTool", f"tool '{tool_name}' is a streaming tool; call it with execute_stream"
        )

    def _await(self, awaitable: Awaitable[Any], session: SessionContext, handle: Optional[CallHandle] = None) -> Any:
        """Run ``awaitable`` on the background loop with ``session`` set; block for the result.

        With ``handle``, ``handle.cancel()`` cancels the task and this raises
        :class:`ToolCancelled` once the task has finished (its ``finally``
        blocks have run).
        """
        if self._loop.is_current_thread():
            _discard(awaitable)
            raise RuntimeError("cannot block on the dispatcher's event loop from its own thread")
        loop = self._loop.get()
        if handle is None:
            return asyncio.run_coroutine_threadsafe(_with_session(session, awaitable), loop).result()
        # The cancel goes to the task itself, not to this future: the future
        # only completes when the task has, so the tool's cleanup is over
        # when this returns.
        future = asyncio.run_coroutine_threadsafe(_cancellable(session, awaitable, handle), loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if handle.cancelled:
                raise handle._error() from None
            raise

    def _close_stream_result(self, result: Any, session: SessionContext) -> None:
        if inspect.isasyncgen(result):
            if self._loop.is_current_thread():
                self._loop.get().create_task(_with_session(session, result.aclose()))
            else:
                self._await(result.aclose(), session)
        else:
            _context_for(session).run(result.close)

    def _stream(
        self,
        invoke: Callable[[], Any],
        session: SessionContext,
        handle: CallHandle,
        inputs: Union[Inputs, AsyncInputs, None] = None,
    ) -> Iterator[Chunk]:
        ctx = _context_for(session)
        source: Any = None
        try:
            try:
                result = handle._run_sync(ctx.run, invoke)
                if inspect.isawaitable(result):
                    result = self._await(result, session, handle)
                if isinstance(result, _SINGLE_VALUES) or not isinstance(
                    result, (collections.abc.Iterable, collections.abc.AsyncIterator)
                ):
                    yield encode_chunk(result, default_final=True)
                    return
                source = result if isinstance(result, collections.abc.AsyncIterator) else iter(result)
            except ToolFailure:
                raise
            except Exception as exc:
                raise ToolFailure.from_exception(exc) from exc
            is_async = isinstance(source, collections.abc.AsyncIterator)
            while True:
                try:
                    if is_async:
                        item = self._await(_anext_or_end(source), session, handle)
                    else:
                        item = handle._run_sync(ctx.run, next, source, _END)
                except ToolFailure:
                    raise
                except Exception as exc:
                    raise ToolFailure.from_exception(exc) from exc
                if item is _END:
                    return
                yield encode_chunk(item)
        finally:
            try:
                if source is not None:
                    self._close_source(source, ctx, session)
            finally:
                if inputs is not None:
                    # Stops reading the client's inputs the tool did not take.
                    _close_quietly(inputs)
                handle._finish()

    def _close_source(self, source: Any, ctx: contextvars.Context, session: SessionContext) -> None:
        try:
            if inspect.isasyncgen(source):
                self._close_stream_result(source, session)
            elif callable(getattr(source, "close", None)):
                ctx.run(source.close)
        except Exception:
            logger.exception("error while closing stream source")
