"""Type stub for the Rust (PyO3) extension that runs the worker's gRPC server."""

from typing import Iterator, Optional, Tuple, Type

from snakepit_bridge.dispatcher import ToolDispatcher

class Server:
    """A running gRPC server."""

    port: int
    """TCP port the server is bound to (the OS-assigned one when asked for 0)."""

    def wait(self) -> None:
        """Block until the server has shut down."""

    def shutdown(self) -> None:
        """Ask the server to shut down; :meth:`wait` then returns."""

class InterruptSlot:
    """Raises an exception in another Python thread, at most once, only while that thread is registered.

    Each method runs as one native call with the GIL held, so an asynchronous
    exception never lands inside one of them (see ``CallHandle``).
    """

    def __init__(self, exception: Type[BaseException]) -> None:
        """A slot that raises ``exception`` (a ``BaseException`` subclass; ``TypeError`` otherwise)."""

    def enter(self) -> bool:
        """Register the calling thread; ``False`` (registering nothing) if already interrupted."""

    def exit(self) -> None:
        """Unregister the thread, withdrawing an exception scheduled in it but not delivered yet."""

    def interrupt(self) -> bool:
        """Mark the slot interrupted and schedule the exception in the registered thread, if any.

        The thread gets it at its next Python instruction. Returns ``False`` if
        the slot was already interrupted.
        """

    @property
    def interrupted(self) -> bool:
        """Whether :meth:`interrupt` was called."""

    @property
    def thread_id(self) -> Optional[int]:
        """``threading.get_ident()`` of the registered thread, or ``None``."""

class InputIterator:
    """The inputs of one duplex call (``ExecuteDuplexTool``), in order: ``(data, is_raw)`` pairs.

    Created by the server only (not constructible from Python) and passed to
    ``dispatcher.open_stream(..., inputs=...)``, which wraps it into the
    iterator the tool sees (:mod:`snakepit_bridge.duplex`). Implements
    :class:`~snakepit_bridge.duplex.InputSource`: ``data`` is UTF-8 JSON, or
    opaque bytes when ``is_raw`` is true.

    Inputs are read from the client only as they are asked for (a few ahead),
    so HTTP/2 flow control holds back a client that sends faster.
    """

    def __iter__(self) -> Iterator[Tuple[bytes, bool]]: ...
    def __next__(self) -> Tuple[bytes, bool]:
        """Wait (with the GIL released) for the next input.

        Raises ``StopIteration`` when the client has closed its side, or once
        :meth:`close` was called. When the call is being cancelled it waits
        for :meth:`close` (which the cancel brings) rather than report an end.
        """

    def close(self) -> None:
        """End the iteration from any thread: a waiting ``__next__`` returns at once; no more inputs are read."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""

def serve(dispatcher: ToolDispatcher, host: str, port: int, token: str) -> Server:
    """Start serving ``dispatcher`` on ``host:port`` (0 = any free port).

    ``token``, when non-empty, is required from clients. Each request gets a
    :class:`~snakepit_bridge.cancellation.CallHandle` from
    ``dispatcher.new_call``; the server cancels it when the caller goes away or
    the call's ``grpc-timeout`` deadline passes. Duplex calls also pass an
    :class:`InputIterator` as ``inputs=`` to ``dispatcher.open_stream``.
    """
