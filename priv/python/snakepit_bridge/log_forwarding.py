"""Python's log records, forwarded to the node's ``Logger``.

A worker installs :class:`NodeLogHandler` on the root logger (and routes
:mod:`warnings` through :mod:`logging`): each record becomes one stderr
line, :data:`PREFIX` then a JSON object, which the node turns into a
``Logger`` call at the record's level with the pool, the worker id, the
Python logger's name and, inside a tool, the tool, the session id and the
call's metadata (see ``snakepit_core::log_record``). Tracebacks are kept
whole, up to :data:`MAX_LINE_BYTES` per record. Records travel the bounded
path of the worker's other output: past its rate, lines are dropped and
counted, and the node says so in a warning.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any, Dict, Optional, TextIO

from .session_context import current_session_context

__all__ = ["PREFIX", "MAX_LINE_BYTES", "NodeLogHandler", "install"]

#: What starts a record's line (an ASCII record separator, then a tag).
PREFIX = "\x1esnakepit-log "

#: The longest record line written: the node keeps lines up to 64 KiB.
MAX_LINE_BYTES = 60 * 1024


class NodeLogHandler(logging.Handler):
    """Writes each record as one line for the node, on ``stream`` (the worker's stderr)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._stream.write(record_line(record) + "\n")
            self._stream.flush()
        except Exception:
            self.handleError(record)


def record_line(record: logging.LogRecord) -> str:
    """The line that carries ``record`` to the node."""
    fields: Dict[str, Any] = {
        "levelno": record.levelno,
        "logger": record.name,
        "message": record.getMessage(),
    }
    trace = _traceback(record)
    if trace:
        fields["traceback"] = trace
    context = current_session_context()
    if context is not None:
        fields["tool"] = context.tool
        fields["session_id"] = context.session_id
        fields["metadata"] = context.metadata
    line = _encode(fields)
    if len(line.encode("utf-8", "replace")) <= MAX_LINE_BYTES:
        return line
    # Too long for one line: the message and traceback are cut, keeping
    # their start (where a traceback says where it began); if that is not
    # enough, the call's metadata goes.
    keep = MAX_LINE_BYTES // 16
    for key in ("message", "traceback", "logger"):
        if key in fields and len(fields[key]) > keep:
            fields[key] = fields[key][:keep] + " [cut]"
    line = _encode(fields)
    if len(line.encode("utf-8", "replace")) > MAX_LINE_BYTES:
        fields["metadata"] = {"snakepit": "metadata dropped: the record was too long"}
        line = _encode(fields)
    return line


def _encode(fields: Dict[str, Any]) -> str:
    return PREFIX + json.dumps(fields, ensure_ascii=False, default=str)


def _traceback(record: logging.LogRecord) -> Optional[str]:
    parts = []
    if record.exc_info and record.exc_info[0] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts) or None


def install(stream: TextIO, level: str = "INFO") -> NodeLogHandler:
    """Make the root logger (and :mod:`warnings`) write to the node; returns the handler.

    Replaces the root logger's handlers; ``level`` is the root logger's
    level (``SNAKEPIT_LOG_LEVEL`` in a worker, by default ``INFO``): a level
    name or number; anything else is ``INFO``, with a warning.
    """
    handler = NodeLogHandler(stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(int(level) if level.isdigit() else level)
    except (ValueError, TypeError):
        root.setLevel(logging.INFO)
        logging.getLogger(__name__).warning("log level %r is not a logging level; using INFO", level)
    logging.captureWarnings(True)
    return handler
