"""Type stub for the Rust (PyO3) extension that runs the worker's gRPC server."""

from snakepit_bridge.dispatcher import ToolDispatcher

class Server:
    """A running gRPC server."""

    port: int
    """TCP port the server is bound to (the OS-assigned one when asked for 0)."""

    def wait(self) -> None:
        """Block until the server has shut down."""

    def shutdown(self) -> None:
        """Ask the server to shut down; :meth:`wait` then returns."""

def serve(dispatcher: ToolDispatcher, host: str, port: int, token: str) -> Server:
    """Start serving ``dispatcher`` on ``host:port`` (0 = any free port).

    ``token``, when non-empty, is required from clients.
    """
