"""The variables of a session as last seen by one client: what its reads,
writes and watch updates keep, never an older version over a newer one
(:class:`VariableCache`)."""

from __future__ import annotations

import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    Optional,
)

if TYPE_CHECKING:  # pragma: no cover
    from .bridge import Variable

__all__ = ["VariableCache"]


class VariableCache:
    """The variables of a session as last seen by this client (thread-safe).

    Every read, write and watch update of an
    :class:`~snakepit_bridge.session_context.AsyncSessionContext` goes
    through it, and never replaces a variable with an older version of it.
    While a live watch covers a variable (its stream is connected and its
    current value arrived), the watch keeps the entry fresh and the session
    answers ``get_variable`` from here without asking the node; otherwise the
    entry is only what was last seen, and reads ask the node.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._variables: Dict[str, Variable] = {}
        self._names_by_id: Dict[str, str] = {}
        self._live: Dict[str, int] = {}

    def update(self, variable: Variable) -> None:
        """Remember ``variable`` unless a newer state of it is already known."""
        with self._lock:
            known = self._variables.get(variable.name)
            if known is not None:
                if known.id == variable.id:
                    if variable.version < known.version:
                        return
                elif variable.created_at < known.created_at:
                    return  # an older incarnation of a re-registered name
                if known.id != variable.id:
                    self._names_by_id.pop(known.id, None)
            self._variables[variable.name] = variable
            self._names_by_id[variable.id] = variable.name

    def discard(self, name: str, variable_id: Optional[str] = None) -> None:
        """Forget ``name`` (only the incarnation ``variable_id`` when given)."""
        with self._lock:
            known = self._variables.get(name)
            if known is None or (variable_id is not None and known.id != variable_id):
                return
            del self._variables[name]
            self._names_by_id.pop(known.id, None)

    def get(self, identifier: str) -> Optional[Variable]:
        """The last seen state of a variable (by name or id), or ``None``."""
        with self._lock:
            name = identifier if identifier in self._variables else self._names_by_id.get(identifier, identifier)
            return self._variables.get(name)

    def value(self, identifier: str, default: Any = None) -> Any:
        """The last seen value of a variable (by name or id), or ``default``."""
        variable = self.get(identifier)
        return default if variable is None else variable.value

    def is_live(self, identifier: str) -> bool:
        """Whether a connected watch keeps this variable fresh right now."""
        with self._lock:
            name = identifier if identifier in self._variables else self._names_by_id.get(identifier, identifier)
            return self._live.get(name, 0) > 0 and name in self._variables

    def fresh(self, identifier: str) -> Optional[Variable]:
        """The variable if a live watch keeps it fresh, else ``None``."""
        with self._lock:
            name = identifier if identifier in self._variables else self._names_by_id.get(identifier, identifier)
            if self._live.get(name, 0) > 0:
                return self._variables.get(name)
            return None

    def names(self) -> List[str]:
        """Names of the cached variables, sorted."""
        with self._lock:
            return sorted(self._variables)

    def snapshot(self) -> Dict[str, Any]:
        """Name → last seen value of every cached variable."""
        with self._lock:
            return {name: variable.value for name, variable in sorted(self._variables.items())}

    def clear(self) -> None:
        """Forget every variable (live watches refill it)."""
        with self._lock:
            self._variables.clear()
            self._names_by_id.clear()

    def __contains__(self, identifier: object) -> bool:
        return isinstance(identifier, str) and self.get(identifier) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._variables)

    def __repr__(self) -> str:
        return f"VariableCache({self.snapshot()!r})"

    # -- for watches ---------------------------------------------------------

    def _acquire_live(self, name: str) -> None:
        with self._lock:
            self._live[name] = self._live.get(name, 0) + 1

    def _release_live(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                count = self._live.get(name, 0) - 1
                if count > 0:
                    self._live[name] = count
                else:
                    self._live.pop(name, None)
