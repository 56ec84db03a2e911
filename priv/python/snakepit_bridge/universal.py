"""The universal call: any Python function, attribute or method, called from Elixir.

Elixir's ``Snakepit.call/4``, ``attr/3``, ``method/4``, ``release/1`` and the
enumeration of refs ride the worker protocol's ``ExecuteTool`` under the
reserved tool names ``snakepit.call``, ``snakepit.next``, ``snakepit.release``,
``snakepit.len`` and ``snakepit.refs`` (adapter tools cannot have them: a
Python method name has no dot). Each takes a JSON object of arguments and
answers with a JSON object (or raw bytes, for a call that returned bytes).

What a result becomes (:meth:`Universal.to_wire`):

* ``None``, booleans, numbers, strings: themselves; lists, tuples, sets: lists;
  dicts whose keys are strings, numbers, booleans or ``None``: dicts;
* bytes inside a container: ``{"__type__": "bytes", "__schema__": 1,
  "base64": ...}`` (a call that returns bytes answers with the raw bytes);
* generators, iterators and async iterators (not strings, bytes, containers
  or context managers): a *stream ref*, ``{"__type__": "stream_ref",
  "__schema__": 1, "id", "session_id", "stream_type", "type_name",
  "python_module"}``, consumed with the ``next`` operation;
* NumPy arrays and scalars (``tolist()``), pydantic models
  (``model_dump()``) and dataclass instances: their plain form, converted the
  same way, when its JSON takes at most ``max_plain_bytes``;
* anything else (and plain forms that are too large): a *ref*,
  ``{"__type__": "ref", "__schema__": 1, "id", "session_id", "type_name",
  "python_module", "repr"}``.

Arguments name refs as ``{"__snakepit_ref__": id}``, anywhere in the
positional or keyword arguments; they become the objects again.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import inspect
import json
import os
import threading
import time
import types
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .errors import VALIDATION, ToolCancelled, ToolFailure
from .limits import MAX_DEPTH
from .refs import ITERATOR, OBJECT, Entry, Pending, RefRegistry
from .serialization import encode_result

__all__ = [
    "Universal",
    "Policy",
    "EncodedJson",
    "RESERVED_PREFIX",
    "POLICY_ENV_VAR",
    "stream_type",
]

#: Tool names starting with this are the universal call's operations.
RESERVED_PREFIX = "snakepit."
#: Environment variable holding the pool's :class:`Policy` as JSON.
POLICY_ENV_VAR = "SNAKEPIT_UNIVERSAL"

_REF_KEY = "__snakepit_ref__"
_SCHEMA = 1
_REPR_LIMIT = 200
_KEY_TYPES = (str, int, float, bool, type(None))
_BINARY = (bytes, bytearray, memoryview)
_END = object()

#: How long a fetch keeps pulling items once it has one, at most (seconds).
DEFAULT_LINGER = 0.02
#: The JSON bytes one fetch answers with, about (more only for a single item).
DEFAULT_BATCH_BYTES = 1024 * 1024
#: Time kept back before a call's deadline for the answer to travel (seconds).
_DEADLINE_MARGIN = 0.005

Awaiter = Callable[[Awaitable[Any]], Any]


class EncodedJson(bytes):
    """UTF-8 JSON already encoded: sent as it is, as a JSON payload."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the universal call may do in this worker.

    Attributes:
        allow_call: ``True`` (any module), ``False`` (the universal call is
            off) or the module names it may import (a name allows its
            submodules too). Not a sandbox: a ref's attributes reach
            whatever the object reaches.
        max_refs: Live refs one session or process may hold.
        ref_ttl: Seconds an unused ref lives.
        max_plain_bytes: Largest JSON of a plain form (NumPy, pydantic,
            dataclass) returned as a value; larger ones are refs.
    """

    allow_call: Union[bool, Tuple[str, ...]] = True
    max_refs: int = 10_000
    ref_ttl: float = 3600.0
    max_plain_bytes: int = 4 * 1024 * 1024

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> Policy:
        """The policy the pool put in :data:`POLICY_ENV_VAR` (defaults without it).

        Raises:
            ValueError: The variable is not the JSON the pool writes.
        """
        text = (os.environ if environ is None else environ).get(POLICY_ENV_VAR)
        if not text:
            return cls()
        doc = json.loads(text)
        allow = doc.get("allow_call", True)
        if isinstance(allow, list):
            allow = tuple(str(name) for name in allow)
        elif not isinstance(allow, bool):
            raise ValueError(f"{POLICY_ENV_VAR}: allow_call must be a boolean or a list of module names")
        return cls(
            allow_call=allow,
            max_refs=int(doc.get("max_refs", cls.max_refs)),
            ref_ttl=float(doc.get("ref_ttl_ms", cls.ref_ttl * 1000)) / 1000,
            max_plain_bytes=int(doc.get("max_plain_bytes", cls.max_plain_bytes)),
        )

    def allows(self, module: str) -> bool:
        """Whether ``module`` may be imported by a call."""
        if isinstance(self.allow_call, bool):
            return self.allow_call
        return any(module == name or module.startswith(name + ".") for name in self.allow_call)


def stream_type(value: Any) -> Optional[str]:
    """``"generator"``, ``"async_generator"``, ``"iterator"`` or
    ``"async_iterator"`` for values consumed lazily, ``None`` for values."""
    if isinstance(value, types.GeneratorType):
        return "generator"
    if isinstance(value, types.AsyncGeneratorType):
        return "async_generator"
    if isinstance(value, (str, bytes, bytearray, list, tuple, dict, set, frozenset)):
        return None
    if hasattr(value, "__enter__") and hasattr(value, "__exit__"):
        # Files, connections: objects with a lifetime, kept as refs.
        return None
    if hasattr(value, "__next__") and hasattr(value, "__iter__"):
        return "iterator"
    if hasattr(value, "__anext__") and hasattr(value, "__aiter__"):
        return "async_iterator"
    return None


def _failure(error_type: str, message: str) -> ToolFailure:
    return ToolFailure(VALIDATION, error_type, message)


def _text(args: Mapping[str, Any], key: str, default: Optional[str] = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str):
        raise _failure("InvalidArguments", f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _count(args: Mapping[str, Any], key: str, default: int) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _failure("InvalidArguments", f"'{key}' must be a non-negative integer, got {value!r}")
    return value


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 1] + "…"


def _module_of(value: Any) -> str:
    module = getattr(type(value), "__module__", None)
    return module if isinstance(module, str) else ""


async def _anext_or_end(source: Any) -> Any:
    try:
        return await source.__anext__()
    except StopAsyncIteration:
        return _END


class _Wiring:
    """One conversion to the wire: its scope, session, the tags it made and
    the registry entries it added (released if the operation fails)."""

    __slots__ = ("held", "scope", "session_id", "tagged")

    def __init__(self, scope: str, session_id: str) -> None:
        self.scope = scope
        self.session_id = session_id
        self.tagged = 0
        self.held: List[str] = []


class _Op:
    """What an operation knows of its call: session, deadline, how to await."""

    __slots__ = ("awaiter", "deadline", "session_id")

    def __init__(self, session_id: str, awaiter: Awaiter, deadline: Optional[float]) -> None:
        self.session_id = session_id
        self.awaiter = awaiter
        self.deadline = deadline


def _iterates_itself(obj: Any) -> bool:
    """Whether ``iter(obj) is obj`` (files, cursors): one iteration for all."""
    try:
        return iter(obj) is obj
    except TypeError:
        return False


class Universal:
    """Runs the universal call's operations for a worker's dispatcher.

    Args:
        policy: What calls may do.
        registry: Where refs live (a new one by default).
    """

    def __init__(self, policy: Optional[Policy] = None, registry: Optional[RefRegistry] = None) -> None:
        self.policy = policy or Policy()
        self.registry = registry or RefRegistry(self.policy.max_refs, self.policy.ref_ttl)
        self._handlers: Dict[str, Callable[[Dict[str, Any], _Op], bytes]] = {
            "snakepit.call": self._call,
            "snakepit.next": self._next,
            "snakepit.release": self._release,
            "snakepit.len": self._len,
            "snakepit.refs": self._refs,
        }

    def knows(self, tool_name: str) -> bool:
        """Whether ``tool_name`` is one of the operations."""
        return tool_name in self._handlers

    def run(
        self,
        tool_name: str,
        arguments: Dict[str, Any],
        session_id: str,
        awaiter: Awaiter,
        deadline: Optional[float] = None,
    ) -> bytes:
        """Run operation ``tool_name``; returns :class:`EncodedJson` or raw bytes.

        ``awaiter`` runs an awaitable to its end (on the dispatcher's loop,
        cancellable with the call); ``deadline`` is the call's, as
        ``time.monotonic()``.

        Raises:
            ToolFailure: ``validation`` for refused or malformed requests and
                unknown or released refs; ``python`` for what Python raised.
        """
        if self.policy.allow_call is False and tool_name != "snakepit.release":
            raise _failure("CallNotAllowed", "this pool does not allow the universal call (allow_call: false)")
        return self._handlers[tool_name](arguments, _Op(session_id, awaiter, deadline))

    def close(self) -> None:
        """Release every ref."""
        self.registry.close()

    # -- operations -------------------------------------------------------

    def _call(self, args: Dict[str, Any], op: _Op) -> bytes:
        scope = _text(args, "scope")
        path = _text(args, "path", "")
        action = _text(args, "action", "call")
        if action not in ("call", "attr"):
            raise _failure("InvalidArguments", f"unknown action {action!r}")
        positional = args.get("args", [])
        keywords = args.get("kwargs", {})
        if not isinstance(positional, list) or not isinstance(keywords, dict):
            raise _failure("InvalidArguments", "'args' must be a list and 'kwargs' an object")
        # Refs in use here are not swept while the call runs.
        used: List[Entry] = []
        try:
            obj = self._target(args.get("target"), used)
            if args.get("has_refs"):
                positional = self._from_wire(positional, 0, used)
                keywords = self._from_wire(keywords, 0, used)
            for name in path.split(".") if path else ():
                if not name.isidentifier():
                    raise _failure("InvalidArguments", f"{path!r} is not a dotted path of attribute names")
                obj = getattr(obj, name)
            if action == "call":
                if not callable(obj):
                    raise TypeError(f"'{type(obj).__name__}' object at {path or 'the target'!r} is not callable")
                obj = obj(*positional, **keywords)
                if inspect.isawaitable(obj) and stream_type(obj) is None:
                    obj = op.awaiter(obj)
        finally:
            self.registry.done(used)
        if isinstance(obj, _BINARY):
            return bytes(obj)
        wiring = _Wiring(scope, op.session_id)
        try:
            value = self.to_wire(obj, wiring)
            return self._encode({"value": value, "tagged": wiring.tagged})
        except BaseException:
            # Nobody will learn of the refs made so far.
            self.registry.release(wiring.held)
            raise

    def _next(self, args: Dict[str, Any], op: _Op) -> bytes:
        ref_id = _text(args, "ref")
        position = args.get("position")
        if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 0):
            raise _failure("InvalidArguments", f"'position' must be a non-negative integer, got {position!r}")
        limit = _count(args, "max", 1)
        linger = _count(args, "linger_us", int(DEFAULT_LINGER * 1e6)) / 1e6
        batch_bytes = _count(args, "max_bytes", DEFAULT_BATCH_BYTES)
        if self.registry.gone_reason(ref_id) == "exhausted":
            # Like a Python iterator: an exhausted one stays empty.
            return EncodedJson(b'{"done":true,"tagged":0,"position":0,"items":[]}')
        entry = self.registry.get(ref_id, use=True)
        try:
            answer: Dict[str, Any] = {}
            if args.get("fresh"):
                entry = self._fresh_iterator(entry)
                answer["iterator"] = entry.id
            elif entry.kind != ITERATOR and not _iterates_itself(entry.obj):
                raise _failure("NotAnIterator", f"ref {entry.id} is not an iterator; enumerate it afresh")
            with _locked(entry.lock):
                if position is not None:
                    # Positions are absolute: confirming twice is harmless.
                    for _ in range(min(max(0, position - entry.base), len(entry.pending))):
                        entry.pending.popleft()
                        entry.base += 1
                self._fill(entry, limit, linger, batch_bytes, op)
                if not entry.pending:
                    # Reported to a fetch, not to a confirmation (max 0),
                    # which nobody reads.
                    if entry.failure is not None and limit > 0:
                        self.registry.release([entry.id], "stopped by the exception its iterator raised")
                        raise entry.failure
                    if entry.done and entry.failure is None and entry.kind == ITERATOR:
                        self.registry.release([entry.id], "exhausted")
                items = [entry.pending[i] for i in range(min(limit, len(entry.pending)))]
                answer["done"] = entry.done and entry.failure is None and len(entry.pending) <= limit
                answer["position"] = entry.base
        finally:
            self.registry.done([entry])
        answer["tagged"] = sum(item.tagged for item in items)
        head = self._encode(answer)
        # The items are JSON already: spliced in, not encoded again.
        return EncodedJson(head[:-1] + b',"items":[' + b",".join(item.json for item in items) + b"]}")

    def _release(self, args: Dict[str, Any], op: _Op) -> bytes:
        refs = args.get("refs")
        scope = args.get("scope")
        released = 0
        if isinstance(refs, list) and all(isinstance(r, str) for r in refs):
            released += self.registry.release(refs)
        elif refs is not None:
            raise _failure("InvalidArguments", "'refs' must be a list of ref ids")
        if isinstance(scope, str):
            released += self.registry.release_scope(scope)
        elif scope is not None:
            raise _failure("InvalidArguments", "'scope' must be a string")
        return self._encode({"released": released})

    def _len(self, args: Dict[str, Any], op: _Op) -> bytes:
        entry = self.registry.get(_text(args, "ref"))
        try:
            length: Optional[int] = len(entry.obj)
        except TypeError:
            length = None
        return self._encode({"len": length})

    def _refs(self, args: Dict[str, Any], op: _Op) -> bytes:
        scope = args.get("scope")
        answer: Dict[str, Any] = {"live": len(self.registry)}
        if isinstance(scope, str):
            answer["scope"] = self.registry.scope_size(scope)
        return self._encode(answer)

    # -- helpers ----------------------------------------------------------

    def _target(self, target: Any, used: List[Entry]) -> Any:
        if isinstance(target, dict) and isinstance(target.get("module"), str):
            module = target["module"]
            if not self.policy.allows(module):
                raise _failure("CallNotAllowed", f"this pool does not allow calls into module {module!r}")
            return importlib.import_module(module)
        if isinstance(target, dict) and isinstance(target.get("ref"), str):
            entry = self.registry.get(target["ref"], use=True)
            used.append(entry)
            return entry.obj
        raise _failure("InvalidArguments", '\'target\' must be {"module": name} or {"ref": id}')

    def _fresh_iterator(self, entry: Entry) -> Entry:
        """The iterator a new enumeration of ``entry`` reads: a new one for
        an iterable, the entry itself for an iterator or an object that
        iterates itself (a file: its lines are read once, whoever reads)."""
        obj = entry.obj
        if entry.kind == ITERATOR or _iterates_itself(obj):
            return entry
        source = obj.__aiter__() if hasattr(obj, "__aiter__") and not hasattr(obj, "__iter__") else iter(obj)
        return self.registry.add(source, entry.scope, ITERATOR)

    def _fill(self, entry: Entry, limit: int, linger: float, batch_bytes: int, op: _Op) -> None:
        """Pull items into ``entry.pending`` until it holds ``limit``, the
        iterator ends or fails, or the batch should go: it reached
        ``batch_bytes``, ``linger`` passed since its first item, or the
        call's deadline is nearer than twice the last pull took (a slow
        item must not make the fetch time out with items already pulled)."""
        first: Optional[float] = None
        last_pull = 0.0
        size = sum(len(item.json) for item in entry.pending)
        source = entry.obj
        is_async = not hasattr(source, "__next__") and hasattr(source, "__anext__")
        try:
            while len(entry.pending) < limit and not entry.done and entry.failure is None:
                now = time.monotonic()
                if first is not None and (
                    now - first >= linger
                    or size >= batch_bytes
                    or (op.deadline is not None and op.deadline - now < 2 * last_pull + _DEADLINE_MARGIN)
                ):
                    return
                try:
                    item = op.awaiter(_anext_or_end(source)) if is_async else next(source, _END)
                except Exception as exc:
                    entry.failure = ToolFailure.from_exception(exc)
                    return
                last_pull = time.monotonic() - now
                if item is _END:
                    entry.done = True
                    return
                wiring = _Wiring(entry.scope, op.session_id)
                try:
                    encoded = self._encode(self.to_wire(item, wiring))
                except ToolFailure as failure:
                    self.registry.release(wiring.held)
                    entry.failure = failure
                    return
                entry.pending.append(Pending(encoded, wiring.tagged, tuple(wiring.held)))
                size += len(encoded)
                if first is None:
                    first = time.monotonic()
        except ToolCancelled:
            # The iterator was interrupted mid-step: it cannot go on.
            self.registry.release([entry.id], "stopped when a fetch timed out or was cancelled")
            raise

    def to_wire(self, value: Any, wiring: _Wiring, depth: int = 0) -> Any:
        """``value`` as JSON-ready data, objects kept in the registry as refs."""
        if isinstance(value, (str, int, float)) or value is None:
            return value
        if depth >= MAX_DEPTH:
            raise _failure("TooDeep", f"cannot return a value nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, (list, tuple)):
            return [self.to_wire(item, wiring, depth + 1) for item in value]
        if isinstance(value, dict):
            if all(isinstance(key, _KEY_TYPES) for key in value):
                return {key: self.to_wire(item, wiring, depth + 1) for key, item in value.items()}
            return self._ref(value, wiring)
        if isinstance(value, _BINARY):
            wiring.tagged += 1
            return {"__type__": "bytes", "__schema__": _SCHEMA, "base64": base64.b64encode(value).decode("ascii")}
        if isinstance(value, (set, frozenset)):
            return [self.to_wire(item, wiring, depth + 1) for item in value]
        kind = stream_type(value)
        if kind is not None:
            return self._hold(value, wiring, "stream_ref", stream_type=kind)
        plain = self._plain_form(value)
        if plain is not _END:
            return self.to_wire(plain, wiring, depth + 1)
        return self._ref(value, wiring)

    def _plain_form(self, value: Any) -> Any:
        """The plain form of a NumPy value, pydantic model or dataclass,
        when small enough and JSON can carry it; :data:`_END` otherwise."""
        if isinstance(value, type):
            return _END
        if _module_of(value) == "numpy" and callable(getattr(value, "tolist", None)):
            if getattr(value, "nbytes", 0) > self.policy.max_plain_bytes:
                return _END
            plain = value.tolist()
        elif callable(getattr(value, "model_dump", None)):
            plain = value.model_dump()
        elif dataclasses.is_dataclass(value):
            plain = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        else:
            return _END
        try:
            size = len(json.dumps(plain, allow_nan=False, default=_opaque))
        except _Opaque:
            # It holds objects JSON cannot carry: they become refs.
            return plain
        except (ValueError, TypeError, RecursionError):
            # NaN or infinity, keys JSON cannot carry, too deep: kept as a ref.
            return _END
        return plain if size <= self.policy.max_plain_bytes else _END

    def _ref(self, value: Any, wiring: _Wiring) -> Dict[str, Any]:
        return self._hold(value, wiring, "ref", repr=_short_repr(value))

    def _hold(self, value: Any, wiring: _Wiring, tag: str, **fields: str) -> Dict[str, Any]:
        """Keep ``value`` in the registry; its tagged wire form (``tag`` is
        ``"ref"`` or ``"stream_ref"``, with ``fields`` added)."""
        entry = self.registry.add(value, wiring.scope, ITERATOR if tag == "stream_ref" else OBJECT)
        wiring.tagged += 1
        wiring.held.append(entry.id)
        return {
            "__type__": tag,
            "__schema__": _SCHEMA,
            "id": entry.id,
            "session_id": wiring.session_id or None,
            "type_name": type(value).__name__,
            "python_module": _module_of(value),
            **fields,
        }

    def _from_wire(self, value: Any, depth: int, used: List[Entry]) -> Any:
        if depth > MAX_DEPTH:
            raise _failure("TooDeep", f"arguments nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return [self._from_wire(item, depth + 1, used) for item in value]
        if isinstance(value, dict):
            if len(value) == 1 and isinstance(value.get(_REF_KEY), str):
                entry = self.registry.get(value[_REF_KEY], use=True)
                used.append(entry)
                return entry.obj
            return {key: self._from_wire(item, depth + 1, used) for key, item in value.items()}
        return value

    @staticmethod
    def _encode(value: Any) -> EncodedJson:
        return EncodedJson(encode_result(value)[0])


class _Opaque(Exception):
    """A plain form holds an object JSON cannot carry."""


def _opaque(value: Any) -> Any:
    raise _Opaque


class _locked:
    """Holds ``lock`` for a ``with`` block; waits in short steps so that a
    cancel raised into this thread lands while it waits (and not between
    taking the lock and entering the block, where it would keep it)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        acquired = False
        try:
            while not acquired:
                acquired = self._lock.acquire(timeout=0.05)
        except BaseException:
            if acquired:
                self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
