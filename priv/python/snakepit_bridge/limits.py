"""Values the Python package shares with the Rust core and the Elixir side.

Each is written once here; ``test/snakepit/limits_test.exs`` checks that they
agree with ``snakepit_core`` and ``Snakepit.Limits``.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_DEPTH", "PROTOCOL_VERSION"]

#: Version of the worker ⇄ Elixir protocol implemented by this package
#: (``snakepit_core::PROTOCOL_VERSION``).
PROTOCOL_VERSION: Final = "1"

#: The deepest nesting of lists and dicts that crosses between Python and
#: Elixir, in either direction (``snakepit_core::json::MAX_DEPTH``). The node
#: refuses deeper results with the path of the value; values deeper than
#: Python's own recursion limit are refused here, the same way.
MAX_DEPTH: Final = 128
