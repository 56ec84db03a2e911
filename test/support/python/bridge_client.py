"""Creates sessions through the bridge at ``argv[1]``, as a program outside the pools would.

Usage: ``python3 bridge_client.py ADDRESS SESSION_ID...`` with the node's token
in ``SNAKEPIT_TOKEN``. Prints one line per session: ``ok <id>`` or
``error <reason>``.
"""

import os
import sys

from snakepit_bridge.bridge import Bridge
from snakepit_bridge.errors import BridgeError


def main(address: str, session_ids: "list[str]") -> None:
    """Create each session in turn and report how it went."""
    bridge = Bridge(address, os.environ["SNAKEPIT_TOKEN"])
    for session_id in session_ids:
        try:
            bridge.create_session(session_id)
            print(f"ok {session_id}")
        except BridgeError as error:
            print(f"error {error.reason}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
