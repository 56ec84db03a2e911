"""Worker entry point: ``python -m snakepit_bridge.worker --adapter pkg.module.Class``.

Protocol with the parent (Elixir) process:

* stdout carries exactly one line, ``GRPC_READY:<port>`` (or, with
  ``--transport unix``, ``GRPC_READY:unix:@<name>``: a Unix socket in Linux's
  abstract namespace), once the gRPC server listens; anything else the process prints to ``sys.stdout`` is redirected
  to stderr.
* stdin is held open by the parent; EOF on it means the parent is gone and
  the worker exits immediately, with SIGKILL to its whole process group (a
  pool starts each worker as a group leader), so that the subprocesses of
  tools go too. The signal the kernel sends when the parent dies
  (``PR_SET_PDEATHSIG``, on Linux) does the same. A subprocess that left the
  group (``setsid``, ``start_new_session=True``) is out of reach.
* the node's token (``SNAKEPIT_TOKEN``) is taken out of the environment
  before the adapter is loaded: tools and their subprocesses do not see it,
  while the worker's server and bridge client keep it in memory.
* logs and errors go to stderr, records of :mod:`logging` and :mod:`warnings`
  as lines the node turns into ``Logger`` calls (:mod:`snakepit_bridge.log_forwarding`);
  a failure to load the adapter exits with code 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import traceback
from types import ModuleType
from typing import List, Optional, Type

from . import log_forwarding
from .base_adapter import BaseAdapter
from .dispatcher import ToolDispatcher
from .environment import hide_token_from_environment
from .universal import Policy, Universal

__all__ = ["main", "load_adapter_class"]

logger = logging.getLogger("snakepit_bridge.worker")

_PROG = "snakepit_bridge.worker"
_LOOPBACK = "127.0.0.1"


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {_PROG}", description="Snakepit Python worker")
    parser.add_argument("--adapter", required=True, help="dotted path of the adapter class, e.g. pkg.module.Class")
    parser.add_argument("--worker-id", default=f"python-{os.getpid()}", help="worker id reported to callers")
    parser.add_argument(
        "--transport",
        choices=("tcp", "unix"),
        default="tcp",
        help="tcp: loopback, a port the OS chooses; unix: an abstract Unix socket (Linux)",
    )
    return parser.parse_args(argv)


def _exit_when_parent_dies(native: ModuleType) -> None:
    """Exit, taking the process group along, as soon as stdin reaches EOF
    (the parent holds the pipe) or the parent-death signal arrives."""
    native.die_with_parent()
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        logger.warning("no stdin; cannot watch the parent process")
        return

    def watch() -> None:
        # os.read, not sys.stdin.buffer: a daemon thread blocked inside the
        # buffered reader holds its lock and aborts interpreter shutdown.
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        logger.info("stdin closed (parent gone); exiting with the process group")
        native.exit_with_process_group(0)

    threading.Thread(target=watch, name="snakepit-stdin-watch", daemon=True).start()


def load_adapter_class(path: str) -> Type[BaseAdapter]:
    """Import ``package.module.Class`` and check that it is a :class:`BaseAdapter` subclass.

    Raises:
        ValueError: ``path`` is not a dotted path.
        ImportError: The module cannot be imported.
        AttributeError: The module has no such attribute.
        TypeError: The attribute is not a ``BaseAdapter`` subclass.
    """
    module_name, _, class_name = path.rpartition(".")
    if not module_name or not class_name:
        raise ValueError("expected a dotted path like 'package.module.Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, BaseAdapter)):
        raise TypeError(f"{path} is not a subclass of snakepit_bridge.BaseAdapter")
    return cls


def _fail(what: str, exc: BaseException) -> int:
    print(f"{_PROG}: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.flush()
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Run a worker until shutdown; returns the process exit code."""
    log_forwarding.install(sys.stderr, os.environ.get("SNAKEPIT_LOG_LEVEL", "INFO").upper())
    args = _parse_args(argv)
    # Before any user code runs: nothing it starts may outlive the VM or see the token.
    try:
        from snakepit_bridge import _native

        _exit_when_parent_dies(_native)
    except Exception as exc:
        return _fail("cannot load the native extension", exc)
    token = hide_token_from_environment()
    protocol_out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from adapters must not corrupt the protocol

    try:
        adapter_cls = load_adapter_class(args.adapter)
    except Exception as exc:
        return _fail(f"cannot load adapter '{args.adapter}'", exc)
    try:
        universal = Universal(Policy.from_environment())
        adapter = adapter_cls()
        dispatcher = ToolDispatcher(adapter, args.worker_id, universal)
    except Exception as exc:
        return _fail(f"cannot create adapter '{args.adapter}'", exc)
    try:
        if args.transport == "unix":
            server = _native.serve_unix(dispatcher, token)
        else:
            # Loopback only: workers are reached from this machine, never beyond.
            server = _native.serve(dispatcher, _LOOPBACK, 0, token)
    except Exception as exc:
        return _fail("cannot start gRPC server", exc)

    print(server.ready_line, file=protocol_out, flush=True)
    logger.debug("worker %s serving %s on %s", args.worker_id, args.adapter, server.address)
    try:
        server.wait()
    except KeyboardInterrupt:
        server.shutdown()
    finally:
        dispatcher.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
