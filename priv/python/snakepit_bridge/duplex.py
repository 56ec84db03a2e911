"""The inputs of a duplex tool call: what a tool's ``inputs`` argument iterates over.

A duplex call (``ExecuteDuplexTool``) streams inputs to a tool while the tool
streams its outputs back. The tool declares an ``inputs`` parameter and
receives one of:

* :class:`Inputs`, a plain iterator, when the tool is a sync function or
  generator::

      @tool(supports_streaming=True)
      def double(self, inputs):
          for value in inputs:
              yield {"double": value * 2}

* :class:`AsyncInputs`, an async iterator, when the tool is a coroutine
  function or an async generator::

      @tool(supports_streaming=True)
      async def double(self, inputs):
          async for value in inputs:
              yield {"double": value * 2}

Each input is decoded like a tool argument: a JSON payload becomes the
decoded value, a raw payload becomes ``bytes``. The iteration ends when the
client closes its side of the call. Inputs are taken from the client one at a
time as the tool asks for them (with a small read-ahead buffer), so a client
that sends faster than the tool consumes is slowed down by HTTP/2 flow control.

When the call is cancelled (its caller went away or its deadline passed)
while the tool waits for an input, the wait ends at once and raises
:class:`~snakepit_bridge.errors.ToolCancelled` (a sync tool) or the tool's
task is cancelled (an async tool, which sees :class:`asyncio.CancelledError`).
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any, Iterator, Optional, Protocol, Tuple, Union

from .cancellation import CallHandle
from .errors import VALIDATION, ToolFailure

__all__ = ["InputSource", "Inputs", "AsyncInputs", "decode_input"]

#: One undecoded input: ``(data, is_raw)``, as produced by an :class:`InputSource`.
RawInput = Tuple[bytes, bool]


class InputSource(Protocol):
    """Where a duplex call's inputs come from (the dispatcher's ``inputs=``).

    An iterator of :data:`RawInput` pairs ``(data, is_raw)``: ``data`` is UTF-8
    JSON text, or opaque bytes when ``is_raw`` is true. ``__next__`` blocks
    until the next input arrives and raises ``StopIteration`` at the end of
    input. The worker's server passes a ``_native.InputIterator``, which waits
    with the GIL released.

    A source may also have a ``close()`` method, callable from any thread, that
    makes a waiting ``__next__`` raise ``StopIteration`` at once; it is how a
    cancelled call stops waiting for input. Without it a cancel only takes
    effect once the pending ``__next__`` returns.
    """

    def __iter__(self) -> Iterator[RawInput]: ...

    def __next__(self) -> RawInput: ...


def decode_input(data: Union[bytes, bytearray, memoryview], is_raw: bool, index: int = 0) -> Any:
    """Decode one input like a tool argument: raw payloads as ``bytes``, others as JSON.

    Args:
        data: The payload.
        is_raw: Whether ``data`` is opaque bytes rather than JSON text.
        index: Position of the input in the call (0-based), for the error message.

    Raises:
        ToolFailure: ``("validation", "InvalidInput")`` when a JSON payload is
            not valid JSON.
    """
    if is_raw:
        return bytes(data)
    try:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except ValueError as exc:
        raise ToolFailure(VALIDATION, "InvalidInput", f"input {index} is not valid JSON: {exc}") from None


class _InputsBase:
    """What both flavours share: the source, decoding, ending and closing."""

    def __init__(self, source: InputSource, handle: Optional[CallHandle] = None) -> None:
        self._source = source
        self._handle = handle
        self._lock = threading.Lock()
        self._count = 0
        self._finished = False
        self._closed = False

    @property
    def count(self) -> int:
        """How many inputs the tool has taken so far."""
        return self._count

    def _decode(self, raw: RawInput) -> Any:
        data, is_raw = raw
        index = self._count
        self._count += 1
        return decode_input(data, is_raw, index)

    def _end(self) -> None:
        """The source ended: raise ``ToolCancelled`` if that is because the call was cancelled."""
        self._finished = True
        handle = self._handle
        if handle is not None and handle.cancelled:
            # The cancel closed the source to wake this wait, and also
            # scheduled ToolCancelled in the thread running a sync tool:
            # raise it here, once, instead of letting it land later.
            handle._settle_interrupt()
            raise handle._error()

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if callable(close):
            close()


class Inputs(_InputsBase):
    """The inputs of a duplex call, for a sync tool: ``for value in inputs``.

    ``next()`` waits for the client's next input (blocking the calling
    thread) and returns it decoded; it raises ``StopIteration`` once the client
    has closed its side, and :class:`~snakepit_bridge.errors.ToolCancelled`
    if the call is cancelled (also while waiting). A JSON input that cannot
    be decoded raises ``ToolFailure("validation", "InvalidInput")``.

    Args:
        source: Where the inputs come from.
        handle: The call's handle: a cancel of the call is reported as
            ``ToolCancelled`` rather than as the end of input.
    """

    def __iter__(self) -> Inputs:
        return self

    def __next__(self) -> Any:
        if self._finished or self._closed:
            self._end()
            raise StopIteration
        try:
            raw = next(self._source)
        except StopIteration:
            self._end()
            raise StopIteration from None
        return self._decode(raw)

    def close(self) -> None:
        """End the iteration, from any thread: a waiting ``next()`` returns at once."""
        self._closed = True
        self._close_source()


_ITEM, _END, _ERROR = "item", "end", "error"


def _resolve(future: asyncio.Future[Tuple[str, Any]], outcome: Tuple[str, Any]) -> None:
    if not future.done():
        future.set_result(outcome)


class AsyncInputs(_InputsBase):
    """The inputs of a duplex call, for an async tool: ``async for value in inputs``.

    Same values, end and errors as :class:`Inputs`. Waiting for an input does
    not block the event loop: the blocking source is read by a helper thread
    (one per call, started on the first input asked for), only when the tool
    asks for the next input, so inputs are still pulled lazily.

    An ``__anext__`` that is itself cancelled (say by ``asyncio.wait_for``)
    loses nothing: the input it was waiting for is returned by the next
    ``__anext__``.

    Args:
        source: Where the inputs come from.
        handle: The call's handle (see :class:`Inputs`).
    """

    def __init__(self, source: InputSource, handle: Optional[CallHandle] = None) -> None:
        super().__init__(source, handle)
        self._requests: queue.SimpleQueue[Optional[asyncio.Future[Tuple[str, Any]]]] = queue.SimpleQueue()
        self._reader: Optional[threading.Thread] = None
        self._pending: Optional[asyncio.Future[Tuple[str, Any]]] = None

    def __aiter__(self) -> AsyncInputs:
        return self

    async def __anext__(self) -> Any:
        pending = self._pending
        if pending is None:
            with self._lock:
                # Checked under the lock that close() takes, so no request is
                # queued after close() told the reader thread to stop.
                if not (self._finished or self._closed):
                    pending = self._pending = asyncio.get_running_loop().create_future()
                    self._start_reader()
                    self._requests.put(pending)
            if pending is None:
                self._end()
                raise StopAsyncIteration
        # Shielded: if this await is cancelled, the read goes on and the next
        # __anext__ picks its result up.
        kind, value = await asyncio.shield(pending)
        self._pending = None
        if kind == _ITEM:
            return self._decode(value)
        self._finished = True
        if kind == _ERROR:
            raise value
        self._end()
        raise StopAsyncIteration

    def close(self) -> None:
        """End the iteration, from any thread: a waiting ``__anext__`` returns at once."""
        with self._lock:
            self._closed = True
            self._requests.put(None)
        self._close_source()

    def _start_reader(self) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name="snakepit-duplex-inputs", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        """The reader thread: one blocking read of the source per request."""
        while True:
            future = self._requests.get()
            if future is None:
                return
            outcome: Tuple[str, Any]
            try:
                outcome = (_ITEM, next(self._source))
            except StopIteration:
                outcome = (_END, None)
            except BaseException as exc:  # handed to the tool, whatever it is
                outcome = (_ERROR, exc)
            try:
                future.get_loop().call_soon_threadsafe(_resolve, future, outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return
            if outcome[0] != _ITEM:
                return
