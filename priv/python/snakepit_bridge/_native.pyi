"""Type stub for the Rust (PyO3) extension: the worker's gRPC server and the bridge client."""

from typing import Any, Dict, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, Type, Union, final

from snakepit_bridge.dispatcher import ToolDispatcher
from snakepit_bridge.records import SessionRecord, ToolSpecRecord, VariableRecord, VariableUpdateRecord, VersionRecord

__all__ = [
    "serve",
    "serve_unix",
    "die_with_parent",
    "exit_with_process_group",
    "scrub_initial_environment",
    "PARENT_DEATH_SIGNAL",
    "Server",
    "InterruptSlot",
    "InputIterator",
    "BridgeClient",
    "WatchStream",
    "BridgeError",
    "NodeClient",
    "ChunkStream",
    "quiesce",
]

# The classes are Rust structs, which Python code cannot subclass.

@final
class Server:
    """A running gRPC server."""

    port: int
    """TCP port the server is bound to (the OS-assigned one when asked for 0); 0 on a Unix socket."""

    address: str
    """Where the server listens: ``127.0.0.1:<port>`` or ``unix:@<name>``."""

    ready_line: str
    """The line announcing readiness to the parent: ``GRPC_READY:<port>`` or ``GRPC_READY:unix:@<name>``."""

    def wait(self) -> None:
        """Block until the server has shut down."""

    def shutdown(self) -> None:
        """Ask the server to shut down; :meth:`wait` then returns."""

@final
class InterruptSlot:
    """Raises an exception in another Python thread, at most once, only while that thread is registered.

    Each method runs as one native call with the GIL held, so an asynchronous
    exception never lands inside one of them (see ``CallHandle``).
    """

    def __new__(cls, exception: Type[BaseException]) -> InterruptSlot:
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

@final
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

def serve_unix(dispatcher: ToolDispatcher, token: str, name: str = "") -> Server:
    """Like :func:`serve`, on a Unix socket in Linux's abstract namespace.

    ``name`` is the socket's name without the leading ``@``; empty picks a
    fresh random one. The socket has no file, so nothing is left behind.
    Raises ``OSError`` when the name is taken or the platform has no abstract
    sockets, ``ValueError`` for an invalid name.
    """

PARENT_DEATH_SIGNAL: int
"""The signal a pool's worker receives when the VM dies (Linux only): a real-time signal."""

def die_with_parent() -> None:
    """Make the signal the kernel sends when the VM dies (``PR_SET_PDEATHSIG``,
    set by the pool) kill this process's whole process group, tools'
    subprocesses included. Raises ``OSError`` when the handler cannot be installed.
    """

def exit_with_process_group(status: int) -> None:
    """End this process at once, with SIGKILL to its whole process group when
    it leads one (a pool's worker always does), else with ``status``. Never returns.
    """

def scrub_initial_environment(name: str) -> bool:
    """Zero ``name=value`` in this process's initial environment block, which
    ``/proc/<pid>/environ`` shows to processes of the same user. Call it after
    ``os.environ.pop(name)``. Returns whether an entry was found (Linux only).
    """

class BridgeError(Exception):
    """A bridge RPC failed. ``args`` is ``(code, reason, message)``, also available as attributes.

    :mod:`snakepit_bridge.bridge` turns it into the matching
    :class:`snakepit_bridge.errors.BridgeError` subclass.
    """

    code: str
    """gRPC status code name, e.g. ``"NOT_FOUND"``; ``"UNAVAILABLE"`` when the bridge cannot be reached."""
    reason: str
    """The ``x-snakepit-error`` trailer sent by the node (e.g. ``"version_conflict"``), or ``""``."""
    message: str
    """The status message."""

    def __init__(self, code: str, reason: str, message: str) -> None: ...

@final
class WatchStream:
    """The updates of one ``WatchVariables`` call (from :meth:`BridgeClient.watch_variables`).

    Updates are :class:`~snakepit_bridge.records.VariableUpdateRecord` dicts.
    Dropping the object cancels the call.
    """

    async def next(self) -> Optional[VariableUpdateRecord]:
        """The next update; ``None`` once the node ended the stream cleanly or after :meth:`close`.

        Raises :class:`BridgeError` with the final status when the stream
        ended with an error (``watch_overflow``, ``session_ended``, ...).
        Cancelling the awaiting task loses no update.
        """

    def close(self) -> None:
        """Cancel the call at once, from any thread; a waiting :meth:`next` answers ``None``."""

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""

@final
class BridgeClient:
    """A connection to the node's bridge (``BridgeService``); thread-safe.

    Every method is a coroutine running one RPC on the extension's runtime,
    bounded by ``timeout_s`` (default 30 s). Sessions, variables and tools come back as
    dicts mirroring the proto messages in snake_case (JSON fields as ``bytes``,
    times as Unix microseconds in ``*_us``), typed in :mod:`snakepit_bridge.records`.
    Failures raise :class:`BridgeError`.
    """

    address: str
    """The address as given."""

    @staticmethod
    async def connect(address: str, token: str, timeout_s: Optional[float] = None) -> BridgeClient:
        """Connect to ``address`` (``host:port`` or ``http://host:port``).

        Raises ``BridgeError("UNAVAILABLE", ...)`` if nothing answers.
        """

    async def get_version(self) -> VersionRecord: ...
    async def create_session(
        self, session_id: str, ttl_seconds: int = 0, metadata: Optional[Mapping[str, str]] = None
    ) -> SessionRecord: ...
    async def get_session(self, session_id: str) -> SessionRecord: ...
    async def touch_session(self, session_id: str) -> SessionRecord: ...
    async def delete_session(self, session_id: str) -> bool: ...
    async def list_sessions(self) -> List[SessionRecord]: ...
    async def register_variable(
        self,
        session_id: str,
        variable: Tuple[str, str, bytes, bytes, Optional[Mapping[str, str]]],
        source: str = "",
    ) -> VariableRecord: ...
    async def get_variable(self, session_id: str, identifier: str) -> VariableRecord: ...
    async def get_variables(
        self, session_id: str, identifiers: Sequence[str]
    ) -> Tuple[List[VariableRecord], List[str]]: ...
    async def set_variable(
        self,
        session_id: str,
        write: Tuple[str, bytes, Optional[int], Optional[Mapping[str, str]]],
        source: str = "",
    ) -> VariableRecord: ...
    async def set_variables(
        self,
        session_id: str,
        writes: Sequence[Tuple[str, bytes, Optional[int], Optional[Mapping[str, str]]]],
        source: str = "",
    ) -> List[VariableRecord]: ...
    async def list_variables(self, session_id: str, pattern: str = "") -> List[VariableRecord]: ...
    async def delete_variable(self, session_id: str, identifier: str, source: str = "") -> None: ...
    async def list_elixir_tools(self) -> List[ToolSpecRecord]: ...
    async def execute_elixir_tool(
        self,
        tool_name: str,
        arguments_json: bytes,
        session_id: str = "",
        metadata: Optional[Mapping[str, str]] = None,
        timeout_s: Optional[float] = None,
    ) -> Union[Tuple[Literal["ok"], str, bytes], Tuple[Literal["error"], str, str, str, str]]:
        """``("ok", "json" | "raw", data)`` or ``("error", category, error_type, message, traceback)``."""

    async def watch_variables(
        self,
        session_id: str,
        identifiers: Sequence[str],
        include_initial: bool = True,
        heartbeat_ms: int = 0,
        max_buffered: int = 0,
    ) -> WatchStream: ...

#: A payload: ``(data, is_raw)``.
_OutsidePayload = Tuple[bytes, bool]
#: A tool's failure: ``(category, type, message, traceback)``.
_OutsideError = Tuple[str, str, str, str]

@final
class ChunkStream:
    """The chunks of one ``ExecuteStream`` call, in order."""

    async def next(self) -> Optional[Tuple[Optional[_OutsidePayload], bool, Dict[str, str], Optional[_OutsideError]]]:
        """The next chunk ``(payload, is_final, metadata, error)``, or ``None`` at the end."""
    async def send(self, data: bytes, is_raw: bool) -> bool:
        """Send one duplex input; ``False`` once the inputs or the call ended."""
    def end_inputs(self) -> None:
        """End a duplex call's inputs."""
    def close(self) -> None:
        """End the call now (the tool on the node is stopped)."""

@final
class NodeClient:
    """A connection to a node's bridge, for running tools on its pools (async)."""

    @property
    def address(self) -> str: ...
    @staticmethod
    async def connect(
        address: str,
        token: str,
        timeout_s: Optional[float] = None,
        tls_ca_pem: Optional[bytes] = None,
        server_name: Optional[str] = None,
    ) -> NodeClient:
        """Connect (over TLS with ``tls_ca_pem``); ``BridgeError("UNAVAILABLE")`` when nothing answers."""
    async def get_version(self, timeout_s: Optional[float] = None) -> Tuple[str, str, str]:
        """``(protocol_version, bridge_version, runtime_version)``."""
    async def describe(
        self, client_protocol_version: str, timeout_s: Optional[float] = None
    ) -> Tuple[
        Tuple[str, str, str],
        bool,
        str,
        List[Tuple[str, int, str, List[Tuple[str, str, bool, List[Tuple[str, str, bool, str]]]], str]],
    ]:
        """``((versions), compatible, why not, [(pool, size, adapter, tools, error)])``."""
    async def execute(
        self, call: Dict[str, Any]
    ) -> Tuple[Optional[_OutsidePayload], Optional[_OutsideError], Dict[str, str], int, str]:
        """Run a tool: ``(result, error, metadata, execution_time_ms, worker_id)``."""
    async def stream(self, call: Dict[str, Any]) -> ChunkStream:
        """Open a stream of a streaming tool."""
    async def duplex(self, call: Dict[str, Any]) -> ChunkStream:
        """Open a duplex call."""

def quiesce(timeout_s: float = 1.0) -> bool:
    """Wait until no coroutine wake is in progress on the client runtime (run at exit)."""
