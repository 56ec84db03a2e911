"""Where a process finds the node's bridge: ``SNAKEPIT_BRIDGE_ADDRESS`` and
``SNAKEPIT_TOKEN``, which a Snakepit pool sets for its workers, and the token
a worker keeps in memory once it took it out of its environment."""

from __future__ import annotations

import os
from typing import Optional, Tuple

from .errors import BridgeUnavailable

__all__ = [
    "ADDRESS_ENV_VAR",
    "TOKEN_ENV_VAR",
    "bridge_settings",
    "environment_token",
    "hide_token_from_environment",
]

#: Environment variable with the bridge's address (``host:port``), set by the pool for its workers.
ADDRESS_ENV_VAR = "SNAKEPIT_BRIDGE_ADDRESS"
#: Environment variable with the node's token.
TOKEN_ENV_VAR = "SNAKEPIT_TOKEN"

# The node's token once a worker took it out of its environment.
_hidden_token: Optional[str] = None


def bridge_settings(address: Optional[str] = None, token: Optional[str] = None) -> Tuple[str, str]:
    """``(address, token)``: those given, else the environment's.

    Raises:
        BridgeUnavailable: One is neither given nor set (``reason`` ``"not_configured"``).
    """
    address = address if address is not None else os.environ.get(ADDRESS_ENV_VAR, "")
    token = token if token is not None else environment_token()
    if not address or not token:
        missing = [name for name, value in ((ADDRESS_ENV_VAR, address), (TOKEN_ENV_VAR, token)) if not value]
        raise BridgeUnavailable(
            f"the Snakepit bridge is not configured: pass the address and token, or set {' and '.join(missing)} "
            "(a Snakepit pool sets them for its workers)",
            "not_configured",
        )
    return address, token


def hide_token_from_environment() -> str:
    """Move the node's token (``SNAKEPIT_TOKEN``) out of the environment into
    this process's memory, and return it.

    A worker does this before it loads any user code, so that tools and the
    processes they start do not inherit the token: it is removed from
    ``os.environ`` (and the C environment, so ``subprocess`` children lack it)
    and zeroed in the initial environment block that ``/proc/<pid>/environ``
    shows. :meth:`Bridge.from_environment` and
    :meth:`SessionContext.connect <snakepit_bridge.session_context.SessionContext.connect>`
    keep finding it. Calling it again returns the same token.
    """
    global _hidden_token
    token = os.environ.pop(TOKEN_ENV_VAR, None)
    if token:
        _hidden_token = token
        try:
            from . import _native

            _native.scrub_initial_environment(TOKEN_ENV_VAR)
        except (ImportError, OSError):
            # Without the extension (or /proc) only the live environment is cleaned.
            pass
    return _hidden_token or ""


def environment_token() -> str:
    """The node's token: ``$SNAKEPIT_TOKEN``, or the one :func:`hide_token_from_environment` took."""
    return os.environ.get(TOKEN_ENV_VAR) or _hidden_token or ""
