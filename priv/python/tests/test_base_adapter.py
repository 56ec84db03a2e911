from __future__ import annotations

import asyncio
from typing import List, Optional

import pytest

from snakepit_bridge import BaseAdapter, SessionContext, StreamChunk, ToolFailure, tool
from snakepit_bridge.adapters.showcase import ShowcaseAdapter
from snakepit_bridge.adapters.showcase.tool import StreamChunk as ShowcaseStreamChunk
from snakepit_bridge.base_adapter import StreamChunk as BaseStreamChunk


class Sample(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.factor = 10

    @tool
    def bare(self, x: int) -> int:
        """Multiply by the factor.

        More text that is not part of the description.
        """
        return x * self.factor

    @tool()
    def called(
        self,
        name: str = "world",
        items: list = None,  # type: ignore[assignment]  # noqa: RUF013 - an implicit Optional, as adapters may write it
        flag: bool = False,
    ) -> str:
        return f"hello {name}"

    @tool(description="Explicit description", supports_streaming=True)
    def streaming(self, count: int = 3):
        """Docstring that loses to the explicit description."""
        yield from range(count)

    @tool(name="renamed")
    def original_name(self, values: List[int], maybe: Optional[str] = None, other=object()) -> int:  # noqa: B008 - an unannotated default without JSON
        return len(values)

    @tool("Shorthand description")
    async def coro(self, a, b=2):
        return a + b

    @tool
    async def agen(self):
        yield 1

    @tool
    def kwargs_tool(self, fixed: float, *args, **kwargs):
        return kwargs

    def not_a_tool(self) -> None:
        pass


class Forgetful(BaseAdapter):
    def __init__(self) -> None:  # does not call super().__init__()
        self.value = 1

    @tool
    def value_of(self) -> int:
        return self.value


class Overriding(Sample):
    def bare(self, x: int) -> int:  # no @tool: hides the base tool
        return x


def test_package_exports() -> None:
    import snakepit_bridge

    assert snakepit_bridge.__version__ == "0.1.0"
    assert snakepit_bridge.PROTOCOL_VERSION == "1"
    assert StreamChunk is BaseStreamChunk is ShowcaseStreamChunk
    assert issubclass(ToolFailure, Exception)
    assert SessionContext("s", "w").metadata == {}


def test_discovers_only_tool_methods() -> None:
    tools = Sample().get_tools()
    assert set(tools) == {"bare", "called", "streaming", "renamed", "coro", "agen", "kwargs_tool"}


def test_tools_are_bound_and_functions_stay_callable() -> None:
    adapter = Sample()
    assert adapter.get_tools()["bare"].func(4) == 40
    assert adapter.bare(2) == 20
    assert Sample.bare(adapter, 3) == 30
    assert asyncio.run(adapter.coro(1)) == 3


def test_descriptions() -> None:
    tools = Sample().get_tools()
    assert tools["bare"].description == "Multiply by the factor."
    assert tools["called"].description == ""
    assert tools["streaming"].description == "Explicit description"
    assert tools["coro"].description == "Shorthand description"


def test_parameters() -> None:
    tools = Sample().get_tools()
    (x,) = tools["bare"].parameters
    assert (x.name, x.type, x.required, x.default_json) == ("x", "int", True, "")

    name, items, flag = tools["called"].parameters
    assert (name.type, name.required, name.default, name.default_json) == ("str", False, "world", '"world"')
    assert (items.type, items.required, items.default_json) == ("list", False, "null")
    assert (flag.type, flag.default, flag.default_json) == ("bool", False, "false")

    values, maybe, other = tools["renamed"].parameters
    assert values.type == "List[int]"
    assert maybe.type == "Optional[str]"
    assert (other.type, other.required, other.default, other.default_json) == ("any", False, None, "")

    assert [p.name for p in tools["kwargs_tool"].parameters] == ["fixed"]
    assert tools["kwargs_tool"].parameters[0].type == "float"


def test_kinds_and_streaming_flags() -> None:
    tools = Sample().get_tools()
    assert not tools["bare"].supports_streaming
    assert tools["streaming"].supports_streaming and tools["streaming"].is_generator
    assert tools["coro"].is_async and not tools["coro"].is_async_generator
    agen = tools["agen"]
    assert agen.is_async_generator and agen.supports_streaming and agen.is_stream_only
    assert not tools["bare"].is_stream_only


def test_tool_decorator_variants_return_function_unchanged() -> None:
    def f(self):
        return 1

    assert tool(f) is f
    assert tool()(f) is f
    assert tool(description="d", supports_streaming=True, name=None)(f) is f


def test_forgotten_super_init_and_session_context_outside_call() -> None:
    adapter = Forgetful()
    assert adapter.get_tools()["value_of"].func() == 1
    assert adapter.session_context is None


def test_override_without_decorator_hides_tool() -> None:
    tools = Overriding().get_tools()
    assert "bare" not in tools
    assert "called" in tools


def test_duplicate_tool_names_rejected() -> None:
    class Dup(BaseAdapter):
        @tool(name="same")
        def one(self):
            pass

        @tool(name="same")
        def two(self):
            pass

    with pytest.raises(ValueError, match="duplicate tool name"):
        Dup().get_tools()


def test_showcase_tools() -> None:
    tools = ShowcaseAdapter().get_tools()
    expected = {
        "ping",
        "echo",
        "add",
        "error_demo",
        "stream_progress",
        "stream_numbers",
        "infinite_stream",
        "process_binary",
        "async_add",
        "async_stream",
        "session_info",
        "stream_chunks",
        "fail_midstream",
        "frame_rms",
        "echo_inputs",
        "async_echo_inputs",
        "sum_inputs",
    }
    assert expected <= set(tools)
    for name in (
        "stream_progress",
        "stream_numbers",
        "infinite_stream",
        "async_stream",
        "stream_chunks",
        "fail_midstream",
        "frame_rms",
        "echo_inputs",
        "async_echo_inputs",
        "sum_inputs",
    ):
        assert tools[name].supports_streaming, name
    assert [p.type for p in tools["process_binary"].parameters] == ["bytes", "str"]
