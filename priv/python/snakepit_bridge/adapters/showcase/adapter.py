"""Implementation of :class:`ShowcaseAdapter`."""

from __future__ import annotations

import array
import asyncio
import builtins
import hashlib
import logging
import math
import os
import sys
import time
from typing import Any, AsyncIterator, Dict, Iterator, Union

from snakepit_bridge.base_adapter import BaseAdapter
from snakepit_bridge.errors import ToolCancelled
from snakepit_bridge.session_context import SessionContext

from .tool import StreamChunk, tool

__all__ = ["ShowcaseAdapter"]

logger = logging.getLogger(__name__)

#: What stopping a tool looks like from inside: ``ToolCancelled`` in sync code,
#: ``CancelledError`` in a coroutine, ``GeneratorExit`` in a closed generator.
_STOPPED = (ToolCancelled, asyncio.CancelledError, GeneratorExit)


#: Largest power ``compute`` works out, in bits: ``2 ** 10**9`` would hold the worker for minutes.
_MAX_POWER_BITS = 100_000

#: ``array`` type codes of signed PCM samples, by sample width in bytes.
_PCM_TYPECODES = {width: code for code in ("b", "h", "i", "l", "q") for width in (array.array(code).itemsize,)}


def _write_marker(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, so a watcher never reads half of it."""
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as marker:
            marker.write(text)
        os.replace(tmp, path)


class _Outcome:
    """Records in a marker file how a tool's work went, for tests that watch
    from outside the worker: ``"started"``, then on the way out
    ``"finished"``, ``"cancelled"`` (the worker stopped it) or ``"failed"``.

    A sync context manager, so it serves functions, coroutines and (async)
    generators alike. A close after the work finished (``GeneratorExit`` once
    the last chunk was taken) leaves ``"finished"``.
    """

    def __init__(self, path: str, *, started: bool = True) -> None:
        self.path = path
        self.outcome = "failed"
        if started:
            self.started()

    def started(self) -> None:
        _write_marker(self.path, "started")

    def finished(self) -> None:
        self.outcome = "finished"

    def __enter__(self) -> _Outcome:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, _STOPPED) and self.outcome != "finished":
            self.outcome = "cancelled"
        _write_marker(self.path, self.outcome)


class ShowcaseAdapter(BaseAdapter):
    """Demonstrates unary, binary, async, streaming, session and failing tools."""

    def __init__(self) -> None:
        super().__init__()
        #: Per-session state kept in this worker process (see ``set_counter``).
        self._counters: Dict[str, int] = {}

    @tool(description="Remember a counter for the current session, in this worker")
    def set_counter(self, value: int) -> Dict[str, int]:
        """Store ``value`` for the call's session; ``get_counter`` reads it back."""
        self._counters[self._session_id()] = value
        return {"value": value}

    @tool(description="Read the current session's counter from this worker")
    def get_counter(self) -> Dict[str, Any]:
        """Return ``{"value": n}``, with ``None`` when this worker holds no counter for the session."""
        return {"value": self._counters.get(self._session_id())}

    def _session_id(self) -> str:
        context = self.session_context
        return context.session_id if context is not None else ""

    @tool(description="Check that the worker responds")
    def ping(self) -> Dict[str, Any]:
        """Return ``{"message": "pong", "timestamp": <unix time>}``."""
        return {"message": "pong", "timestamp": time.time()}

    @tool(description="Stream `count` pong messages", supports_streaming=True)
    def ping_stream(self, count: int = 5) -> Iterator[Dict[str, Any]]:
        """Yield ``{"message": "pong N", "index": N, "timestamp": t}`` for ``N`` in ``1..count``."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"count must be a non-negative integer, got {count!r}")
        for index in range(1, count + 1):
            yield {"message": f"pong {index}", "index": index, "timestamp": time.time()}

    @tool(description="Arithmetic on two numbers: add, subtract, multiply, divide, power, modulo")
    def compute(self, operation: str, a: Union[int, float], b: Union[int, float]) -> Union[int, float]:
        """Return ``a <operation> b``; an unknown operation or a division by zero raises ``ValueError``."""
        operations = {
            "add": lambda x, y: x + y,
            "subtract": lambda x, y: x - y,
            "multiply": lambda x, y: x * y,
            "divide": lambda x, y: x / y,
            "power": lambda x, y: x**y,
            "modulo": lambda x, y: x % y,
        }
        if operation not in operations:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(operations)}")
        for name, value in (("a", a), ("b", b)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if operation in ("divide", "modulo") and b == 0:
            raise ValueError(f"cannot {operation} by zero")
        if operation == "power" and abs(b) * math.log2(abs(a) + 2) > _MAX_POWER_BITS:
            raise ValueError(f"{a!r} ** {b!r} is too large a number to compute here")
        result: Union[int, float] = operations[operation](a, b)
        return result

    @tool(description="Return the arguments unchanged")
    def echo(self, **kwargs: Any) -> Dict[str, Any]:
        """Return all keyword arguments as a dict."""
        return kwargs

    @tool(description="Add two values")
    def add(self, a: Any, b: Any) -> Any:
        """Return ``a + b``."""
        return a + b

    @tool(description="Raise a builtin exception on purpose")
    def error_demo(self, error_type: str = "ValueError", message: str = "This is a demo error") -> None:
        """Raise ``error_type(message)``; unknown types raise ``RuntimeError``."""
        exc_type = getattr(builtins, error_type, None)
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            exc_type = RuntimeError
        raise exc_type(message)

    @tool(description="Stream progress updates", supports_streaming=True)
    def stream_progress(self, steps: int = 5, delay_ms: int = 100) -> Iterator[Dict[str, Any]]:
        """Yield ``steps`` progress chunks, ``delay_ms`` apart; the last one is final."""
        for i in range(1, steps + 1):
            if i > 1:
                time.sleep(delay_ms / 1000)
            yield {
                "step": i,
                "total": steps,
                "progress": i / steps * 100,
                "message": f"Processing step {i}/{steps}",
                "is_final": i == steps,
            }

    @tool(description="Stream numbers", supports_streaming=True)
    def stream_numbers(self, count: int = 10) -> Iterator[Dict[str, int]]:
        """Yield ``{"number": i}`` for ``i`` in ``0..count-1``."""
        for i in range(count):
            yield {"number": i}

    @tool(description="Tick forever until cancelled", supports_streaming=True)
    def infinite_stream(self, delay_ms: int = 100, marker_path: str = "") -> Iterator[Dict[str, Any]]:
        """Yield ``{"tick": n, "timestamp": t}`` every ``delay_ms`` until the stream is closed.

        When ``marker_path`` is set, ``"closed"`` is written to it on cleanup,
        so cancellation can be observed from outside the worker.
        """
        tick = 0
        try:
            while True:
                yield {"tick": tick, "timestamp": time.time()}
                tick += 1
                time.sleep(delay_ms / 1000)
        finally:
            logger.info("infinite_stream closed after %d ticks", tick)
            if marker_path:
                with open(marker_path, "w", encoding="utf-8") as marker:
                    marker.write("closed")

    @tool(description="Checksum, reverse or upper-case binary data")
    def process_binary(self, data: bytes, operation: str = "checksum") -> Union[Dict[str, Any], bytes]:
        """Apply ``operation`` (``checksum``, ``reverse`` or ``upper``) to ``data``.

        ``checksum`` returns ``{"sha256": hex, "size": n}``; the others return raw bytes.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        data = bytes(data)
        if operation == "checksum":
            return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        if operation == "reverse":
            return data[::-1]
        if operation == "upper":
            return data.upper()
        raise ValueError(f"unknown operation '{operation}' (expected checksum, reverse or upper)")

    @tool(description="Add two values asynchronously")
    async def async_add(self, a: Any, b: Any) -> Any:
        """Return ``a + b`` from a coroutine."""
        await asyncio.sleep(0)
        return a + b

    @tool(description="Stream from an async generator", supports_streaming=True)
    async def async_stream(self, count: int = 3, delay_ms: int = 10) -> AsyncIterator[Dict[str, int]]:
        """Yield ``{"index": i}`` for ``i`` in ``0..count-1``, ``delay_ms`` apart."""
        for i in range(count):
            if i > 0:
                await asyncio.sleep(delay_ms / 1000)
            yield {"index": i}

    @tool(description="Report the current session")
    def session_info(self) -> Dict[str, Any]:
        """Return the session id, worker id, request metadata and seconds left before the deadline (or null)."""
        ctx = self.session_context or SessionContext("", "")
        return {
            "session_id": ctx.session_id,
            "worker_id": ctx.worker_id,
            "metadata": dict(ctx.metadata),
            "time_remaining": ctx.time_remaining(),
        }

    @tool(description="Work in steps (sleeping); shows cancellation")
    def slow_steps(self, steps: int = 10, step_ms: int = 100, marker_path: str = "") -> Dict[str, int]:
        """Sleep ``steps`` times ``step_ms`` ms, then return ``{"steps": steps}``.

        When ``marker_path`` is set, ``"started"`` is written to it when the
        work starts and ``"finished"`` or ``"cancelled"`` on the way out, so a
        test can see from outside whether (and when) the worker stopped the tool.
        """
        with _Outcome(marker_path) as outcome:
            for _ in range(steps):
                time.sleep(step_ms / 1000)
            outcome.finished()
            return {"steps": steps}

    @tool(description="Work in steps (awaiting); shows cancellation")
    async def slow_steps_async(self, steps: int = 10, step_ms: int = 100, marker_path: str = "") -> Dict[str, int]:
        """Like :meth:`slow_steps`, with ``asyncio.sleep``."""
        with _Outcome(marker_path) as outcome:
            for _ in range(steps):
                await asyncio.sleep(step_ms / 1000)
            outcome.finished()
            return {"steps": steps}

    @tool(description="Stream a chunk, work in steps (sleeping), stream another", supports_streaming=True)
    def slow_stream(self, steps: int = 10, step_ms: int = 100, marker_path: str = "") -> Iterator[Dict[str, Any]]:
        """Yield ``{"started": true}``, sleep ``steps`` times ``step_ms`` ms, yield ``{"steps": steps}`` (final).

        Between the two chunks the generator is busy, not suspended at a
        ``yield``. ``marker_path`` is written as in :meth:`slow_steps`, with
        ``"started"`` once the first chunk was taken and the work begins.
        """
        with _Outcome(marker_path, started=False) as outcome:
            yield {"started": True}
            outcome.started()
            for _ in range(steps):
                time.sleep(step_ms / 1000)
            outcome.finished()
            yield {"steps": steps, "is_final": True}

    @tool(description="Async: stream a chunk, work in steps (awaiting), stream another", supports_streaming=True)
    async def slow_stream_async(
        self, steps: int = 10, step_ms: int = 100, marker_path: str = ""
    ) -> AsyncIterator[Dict[str, Any]]:
        """Like :meth:`slow_stream`, with ``asyncio.sleep``."""
        with _Outcome(marker_path, started=False) as outcome:
            yield {"started": True}
            outcome.started()
            for _ in range(steps):
                await asyncio.sleep(step_ms / 1000)
            outcome.finished()
            yield {"steps": steps, "is_final": True}

    @tool(description="Stream StreamChunk objects with metadata", supports_streaming=True)
    def stream_chunks(self, count: int = 3) -> Iterator[StreamChunk]:
        """Yield ``StreamChunk({"index": i})`` with ``source`` metadata; the last one is final."""
        for i in range(count):
            yield StreamChunk(data={"index": i}, is_final=(i == count - 1), metadata={"source": "showcase"})

    @tool(description="Fail in the middle of a stream", supports_streaming=True)
    def fail_midstream(self, after: int = 2) -> Iterator[Dict[str, int]]:
        """Yield ``after`` chunks ``{"i": i}``, then raise ``RuntimeError``."""
        for i in range(after):
            yield {"i": i}
        raise RuntimeError(f"boom after {after}")

    # -- duplex tools: inputs stream in while outputs stream out ---------------
    #
    # Called with ExecuteDuplexTool, they receive the client's inputs as the
    # ``inputs`` iterator (an async iterator for async tools), taken one at a
    # time as they ask for them; see ``snakepit_bridge.duplex``.

    @tool(description="RMS level of each PCM audio frame streamed in", supports_streaming=True)
    def frame_rms(self, inputs: Iterator[bytes], sample_width: int = 2) -> Iterator[Dict[str, Any]]:
        """Yield ``{"frame": i, "rms": level, "samples": n}`` for each input frame.

        Each input is raw bytes of little-endian signed PCM samples,
        ``sample_width`` bytes each (2: 16-bit, the default; 1, 4 and 8 work too).
        ``rms`` is the root mean square of the frame's samples (0.0 for an empty
        frame).
        """
        typecode = _PCM_TYPECODES.get(sample_width)
        if typecode is None:
            widths = ", ".join(str(width) for width in sorted(_PCM_TYPECODES))
            raise ValueError(f"unsupported sample_width {sample_width} (expected one of {widths})")
        for index, frame in enumerate(inputs):
            if not isinstance(frame, bytes):
                raise TypeError(f"frame {index} is {type(frame).__name__}, expected raw bytes")
            if len(frame) % sample_width:
                raise ValueError(f"frame {index} has {len(frame)} bytes, not a multiple of {sample_width}")
            samples = array.array(typecode, frame)
            if sys.byteorder == "big":
                samples.byteswap()
            n = len(samples)
            # Exact integer sum of squares, one rounding at the end.
            rms = math.sqrt(sum(s * s for s in samples) / n) if n else 0.0
            yield {"frame": index, "rms": rms, "samples": n}

    @tool(description="Echo each JSON input as it arrives", supports_streaming=True)
    def echo_inputs(self, inputs: Iterator[Any], delay_ms: int = 0, marker_path: str = "") -> Iterator[Dict[str, Any]]:
        """Yield ``{"index": i, "input": value}`` for each input, as soon as it arrives.

        ``delay_ms`` waits before taking each next input: a slow consumer,
        which shows the client being held back. ``marker_path`` is written as
        in :meth:`slow_steps`: ``"started"`` once running, then
        ``"finished"`` (end of input) or ``"cancelled"``.
        """
        with _Outcome(marker_path) as outcome:
            index = 0
            while True:
                if delay_ms and index:
                    time.sleep(delay_ms / 1000)
                try:
                    value = next(inputs)
                except StopIteration:
                    break
                yield {"index": index, "input": value}
                index += 1
            outcome.finished()

    @tool(description="Echo each JSON input as it arrives, from an async generator", supports_streaming=True)
    async def async_echo_inputs(
        self, inputs: AsyncIterator[Any], marker_path: str = ""
    ) -> AsyncIterator[Dict[str, Any]]:
        """Like :meth:`echo_inputs`, with ``async for``."""
        with _Outcome(marker_path) as outcome:
            index = 0
            async for value in inputs:
                yield {"index": index, "input": value}
                index += 1
            outcome.finished()

    @tool(description="Sum all the numbers streamed in, then yield the total", supports_streaming=True)
    def sum_inputs(self, inputs: Iterator[float]) -> Iterator[Dict[str, Any]]:
        """Consume every input (numbers), then yield ``{"sum": total}`` as the final chunk.

        Nothing is yielded before the client closes its side: the end of
        input is what ends the loop.
        """
        total = sum(inputs)
        yield {"sum": total, "is_final": True}
