"""Log records as the node reads them: one line each, the prefix, then JSON."""

import io
import json
import logging
import warnings

from snakepit_bridge import log_forwarding
from snakepit_bridge.log_forwarding import MAX_LINE_BYTES, PREFIX, NodeLogHandler, record_line
from snakepit_bridge.session_context import SessionContext, _current


def _fields(line: str) -> dict:
    assert line.startswith(PREFIX) and "\n" not in line
    fields: dict = json.loads(line[len(PREFIX) :])
    return fields


def _record(message: str, level: int = logging.WARNING, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("app.x", level, __file__, 1, message, (), exc_info)


def test_a_record_outside_a_tool():
    fields = _fields(record_line(_record("two\nlines")))
    assert fields == {"levelno": logging.WARNING, "logger": "app.x", "message": "two\nlines"}


def test_a_record_inside_a_tool_carries_the_call():
    context = SessionContext("s1", "w1", {"trace_id": "t"}, tool="predict")
    token = _current.set(context)
    try:
        fields = _fields(record_line(_record("hi", logging.INFO)))
    finally:
        _current.reset(token)
    assert fields["tool"] == "predict" and fields["session_id"] == "s1"
    assert fields["metadata"] == {"trace_id": "t"}


def test_the_traceback_is_kept():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        fields = _fields(record_line(_record("failed", logging.ERROR, sys.exc_info())))
    assert fields["traceback"].startswith("Traceback") and "ValueError: bad" in fields["traceback"]


def test_a_huge_record_is_cut_to_one_line_the_node_keeps():
    line = record_line(_record("é" * 100_000))
    assert len(line.encode()) <= MAX_LINE_BYTES
    assert _fields(line)["message"].endswith(" [cut]")


def test_install_routes_logging_and_warnings_to_the_stream():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = log_forwarding.install(stream, "INFO")
        assert isinstance(handler, NodeLogHandler)
        logging.getLogger("app.y").debug("too low")
        logging.getLogger("app.y").info("kept")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old api", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    # Not splitlines(): it also splits at the record separator the prefix starts with.
    lines = [_fields(line) for line in stream.getvalue().split("\n") if line]
    assert [(f["logger"], f["levelno"]) for f in lines] == [("app.y", logging.INFO), ("py.warnings", logging.WARNING)]
    assert "DeprecationWarning: old api" in lines[1]["message"]


def test_huge_metadata_is_dropped_rather_than_the_line_broken():
    context = SessionContext("s1", "w1", {f"k{i}": "v" * 4000 for i in range(64)}, tool="t")
    token = _current.set(context)
    try:
        line = record_line(_record("hi"))
    finally:
        _current.reset(token)
    assert len(line.encode()) <= MAX_LINE_BYTES
    fields = _fields(line)
    assert fields["message"] == "hi" and fields["tool"] == "t"
    assert "metadata dropped" in fields["metadata"]["snakepit"]


def test_an_unknown_level_falls_back_to_info():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        log_forwarding.install(stream, "VERBOSE")
        assert root.level == logging.INFO
        log_forwarding.install(stream, "10")
        assert root.level == logging.DEBUG
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert "'VERBOSE' is not a logging level" in stream.getvalue()
