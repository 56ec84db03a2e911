"""The records that cross the native boundary, as :class:`~typing.TypedDict` types.

The bridge client (``_native.BridgeClient``, in Rust) hands its answers to
Python as plain dicts mirroring the proto messages in snake_case: JSON as
``bytes``, times as Unix microseconds in ``*_us`` fields. :mod:`snakepit_bridge.bridge`
turns them into dataclasses (:class:`~snakepit_bridge.bridge.Variable`,
:class:`~snakepit_bridge.bridge.SessionInfo`,
:class:`~snakepit_bridge.bridge.VariableUpdate`). The tool specs go the other
way too: a worker describes its tools (:meth:`ToolDispatcher.describe_json
<snakepit_bridge.dispatcher.ToolDispatcher.describe_json>`) in the shape the
bridge lists the Elixir tools in.

At run time these are ordinary dicts; the types only tell the type checker
(and the reader) which keys to expect.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

__all__ = [
    "VersionRecord",
    "SessionRecord",
    "VariableRecord",
    "VariableUpdateRecord",
    "ParameterSpecRecord",
    "ToolSpecRecord",
    "DescribeDocument",
    "ElixirToolParameter",
    "ElixirTool",
]


class VersionRecord(TypedDict):
    """The node's versions (proto ``VersionInfo``)."""

    protocol_version: str
    bridge_version: str
    runtime_version: str


class SessionRecord(TypedDict):
    """A session's state (proto ``SessionInfo``)."""

    session_id: str
    created_at_us: int
    last_used_at_us: int
    ttl_seconds: int
    expires_at_us: int
    metadata: Dict[str, str]
    variable_count: int
    watcher_count: int


class VariableRecord(TypedDict):
    """A session variable (proto ``Variable``)."""

    id: str
    name: str
    type: str
    value_json: bytes
    constraints_json: bytes
    metadata: Dict[str, str]
    version: int
    source: str
    update_metadata: Dict[str, str]
    created_at_us: int
    updated_at_us: int


class VariableUpdateRecord(TypedDict):
    """One event of a variable watch (proto ``VariableUpdate``); ``variable`` is ``None`` for heartbeats."""

    update_type: str
    variable_id: str
    variable: Optional[VariableRecord]
    old_value_json: bytes
    update_source: str
    update_metadata: Dict[str, str]
    timestamp_us: int
    version: int


class ParameterSpecRecord(TypedDict):
    """A tool's parameter (proto ``ParameterSpec``); ``default_json`` is ``""`` when there is no default."""

    name: str
    type: str
    required: bool
    default_json: str


class ToolSpecRecord(TypedDict):
    """A tool (proto ``ToolSpec``): an Elixir tool listed by the bridge, or a worker's tool it describes."""

    name: str
    description: str
    supports_streaming: bool
    parameters: List[ParameterSpecRecord]


class DescribeDocument(TypedDict):
    """What a worker's dispatcher reports about itself (``describe_json``, decoded by the server)."""

    adapter: str
    worker_id: str
    tools: List[ToolSpecRecord]


class _ElixirToolParameterKeys(TypedDict):
    name: str
    type: str
    required: bool


class ElixirToolParameter(_ElixirToolParameterKeys, total=False):
    """A parameter of an Elixir tool, as :meth:`Bridge.list_elixir_tools
    <snakepit_bridge.bridge.Bridge.list_elixir_tools>` returns it.

    ``default`` (the decoded default value) is present only when the
    parameter has one.
    """

    default: Any


class ElixirTool(TypedDict):
    """An Elixir tool exposed to Python, as :meth:`Bridge.list_elixir_tools
    <snakepit_bridge.bridge.Bridge.list_elixir_tools>` returns it.
    """

    name: str
    description: str
    supports_streaming: bool
    parameters: List[ElixirToolParameter]
