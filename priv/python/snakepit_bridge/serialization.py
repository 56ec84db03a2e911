"""Encoding of tool results and stream chunks into wire payloads."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .errors import PYTHON, VALIDATION, ToolFailure
from .limits import MAX_DEPTH
from .stream_chunk import StreamChunk

__all__ = ["encode_result", "encode_chunk", "Payload", "Chunk", "MAX_DEPTH"]

#: ``(payload, is_raw)``: raw bytes, or UTF-8 JSON text when ``is_raw`` is false.
Payload = Tuple[bytes, bool]
#: ``(payload, is_raw, is_final, metadata)``: one encoded stream chunk.
Chunk = Tuple[bytes, bool, bool, Dict[str, str]]

_BINARY = (bytes, bytearray, memoryview)
_CONTAINERS = (dict, list, tuple)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_encoder() -> Callable[[Any], str]:
    """One compact JSON encoder for every result and chunk.

    ``json.dumps`` with options builds a new encoder per call, and even a
    kept ``JSONEncoder`` builds its C scanner per call; this builds the C
    encoder once (where CPython has one). It does not track containers for
    cycles: a cyclic value fails with ``RecursionError`` instead.
    """
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return encoder.encode
    c_encode = make(None, _json_default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    join = "".join

    def encode(value: Any) -> str:
        return join(c_encode(value, 0))

    return encode


_encode_json = _json_encoder()


def _too_deep_path(value: Any) -> Optional[str]:
    """The path of the first list or dict nested deeper than :data:`MAX_DEPTH`
    (``["key"][0]...``), or ``None``. Iterative: it runs where recursion failed.

    A container is visited once per depth at which it appears, so shared
    references cost no more than distinct containers, and a cycle is found
    as soon as it reaches the limit."""
    # (parent node, segment) per visited container; paths are rebuilt from it.
    nodes: List[Tuple[int, str]] = []
    stack: List[Tuple[Any, int, int, str]] = [(value, 0, -1, "")]
    seen: Set[Tuple[int, int]] = set()
    while stack:
        item, depth, parent, segment = stack.pop()
        if (id(item), depth) in seen:
            continue
        seen.add((id(item), depth))
        nodes.append((parent, segment))
        if depth >= MAX_DEPTH:
            segments: List[str] = []
            index = len(nodes) - 1
            while index > 0:
                index, segment = nodes[index]
                segments.append(segment)
            return "".join(reversed(segments))
        here = len(nodes) - 1
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(child, _CONTAINERS):
                    stack.append((child, depth + 1, here, f"[{json.dumps(str(key), ensure_ascii=False)}]"))
        elif isinstance(item, (list, tuple)):
            for position, child in enumerate(item):
                if isinstance(child, _CONTAINERS):
                    stack.append((child, depth + 1, here, f"[{position}]"))
    return None


def encode_result(value: Any, root: str = "result") -> Payload:
    """Encode a tool result: binary values raw, everything else as compact JSON.

    JSON encoding also accepts sets/frozensets (as lists), dataclass instances
    (``dataclasses.asdict``) and objects with a ``tolist()`` method (numpy).

    Raises:
        ToolFailure: ``("python", "SerializationError")`` if the value cannot
            be encoded (unsupported type, NaN/Infinity, invalid unicode, ...);
            ``("validation", "TooDeep")`` if it is nested deeper than Python
            can encode (or is cyclic), naming the path under ``root``.
    """
    if isinstance(value, _BINARY):
        return bytes(value), True
    try:
        return _encode_json(value).encode("utf-8"), False
    except RecursionError as exc:
        path = _too_deep_path(value)
        if path is None:
            raise ToolFailure(PYTHON, "SerializationError", f"result is not JSON-serializable: {exc}") from exc
        raise ToolFailure(
            VALIDATION,
            "TooDeep",
            f"cannot receive {root}{path} from Python: nested deeper than {MAX_DEPTH} levels of lists and maps",
        ) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ToolFailure(PYTHON, "SerializationError", f"result is not JSON-serializable: {exc}") from exc


def encode_chunk(item: Any, default_final: bool = False) -> Chunk:
    """Encode one streamed item.

    * :class:`StreamChunk`: its ``data`` is encoded; ``is_final`` and
      ``metadata`` (values ``str()``-ed) come from the chunk.
    * ``dict``: its reserved keys belong to the chunk envelope, not the data.
      ``"is_final"`` must be a ``bool`` and becomes the final flag;
      ``"_metadata"`` must be a dict of ``str`` to ``str`` and becomes the
      chunk's metadata. Both are removed from a copy; anything else under
      them is refused, so that no value is silently reinterpreted or lost.
    * anything else: encoded with :func:`encode_result`, flag ``default_final``.

    Raises:
        ToolFailure: ``("python", "InvalidChunk")`` for an ill-typed reserved
            key; ``("python", "SerializationError")`` as :func:`encode_result`.
    """
    if isinstance(item, StreamChunk):
        payload, is_raw = encode_result(item.data, "chunk")
        chunk_metadata = {str(k): str(v) for k, v in (item.metadata or {}).items()}
        return payload, is_raw, bool(item.is_final), chunk_metadata
    is_final = default_final
    metadata: Dict[str, str] = {}
    if isinstance(item, dict) and ("is_final" in item or "_metadata" in item):
        item = dict(item)
        if "is_final" in item:
            is_final = _final_flag(item.pop("is_final"))
        if "_metadata" in item:
            metadata = _chunk_metadata(item.pop("_metadata"))
    payload, is_raw = encode_result(item, "chunk")
    return payload, is_raw, is_final, metadata


def _invalid_chunk(message: str) -> ToolFailure:
    return ToolFailure(PYTHON, "InvalidChunk", message)


def _final_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _invalid_chunk(
        f'a yielded dict\'s "is_final" marks the final chunk and must be True or False, '
        f"got {value!r} ({type(value).__name__})"
    )


def _chunk_metadata(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _invalid_chunk(
            f"a yielded dict's \"_metadata\" is the chunk's metadata and must be a dict of strings, "
            f"got {type(value).__name__}"
        )
    for key, text in value.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise _invalid_chunk(
                f'a yielded dict\'s "_metadata" must map strings to strings, '
                f"got {key!r}: {text!r} ({type(key).__name__}: {type(text).__name__})"
            )
    return dict(value)
