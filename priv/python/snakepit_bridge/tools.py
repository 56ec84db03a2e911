"""The ``@tool`` decorator and the metadata discovered from tool methods."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, TypeVar, Union, overload

__all__ = ["ToolSpec", "ParameterInfo", "ToolInfo", "tool", "get_tool_spec", "build_tool_info"]

F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__snakepit_tool__"


@dataclass(frozen=True)
class ToolSpec:
    """What ``@tool`` records on a function.

    Attributes:
        name: Explicit tool name, or ``None`` to use the method name.
        description: Explicit description, or ``None`` to use the docstring.
        supports_streaming: Whether the tool may be called with ``execute_stream``.
    """

    name: Optional[str] = None
    description: Optional[str] = None
    supports_streaming: bool = False


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter of a tool, as advertised to callers.

    Attributes:
        name: Parameter name.
        type: Annotation rendered as a string (``"int"``, ``"str"``, ``"list"``;
            ``"any"`` when unannotated).
        required: ``True`` when the parameter has no default.
        default: The default value (``None`` when there is none).
        default_json: The default encoded as JSON text, or ``""`` when there
            is no default or it is not JSON-serializable.
    """

    name: str
    type: str
    required: bool
    default: Any = None
    default_json: str = ""


@dataclass(frozen=True)
class ToolInfo:
    """A discovered tool, bound to its adapter instance.

    Attributes:
        name: Tool name used by callers.
        description: Decorator description, else the first docstring line.
        parameters: Named parameters (``*args``/``**kwargs`` are not listed).
        supports_streaming: Declared streaming support; also ``True`` for
            (async) generator functions, which can only be streamed.
        is_async: The function is a coroutine function.
        is_generator: The function is a generator function.
        is_async_generator: The function is an async generator function.
        func: The bound method to call.
        signature: ``inspect.signature(func)``, used to bind arguments.
    """

    name: str
    description: str
    parameters: Tuple[ParameterInfo, ...]
    supports_streaming: bool
    is_async: bool
    is_generator: bool
    is_async_generator: bool
    func: Callable[..., Any]
    signature: inspect.Signature

    @property
    def is_stream_only(self) -> bool:
        """``True`` when calling the tool produces a (sync or async) generator."""
        return self.is_generator or self.is_async_generator


@overload
def tool(func: F) -> F: ...


@overload
def tool(
    func: Optional[str] = None,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    supports_streaming: bool = False,
) -> Callable[[F], F]: ...


def tool(
    func: Union[F, str, None] = None,
    *,
    name: Optional[str] = None,
    description: Optional[str] = None,
    supports_streaming: bool = False,
) -> Union[F, Callable[[F], F]]:
    """Mark an adapter method as a tool callable from Elixir.

    Usable bare (``@tool``), called (``@tool()``), or with options
    (``@tool(description="...", supports_streaming=True, name="alias")``);
    ``@tool("description")`` is accepted as a shorthand. The function is
    returned unchanged (only a :class:`ToolSpec` attribute is attached), so it
    stays directly callable.

    Args:
        func: The function when used bare; a description string as shorthand.
        name: Tool name; defaults to the function name.
        description: Description; defaults to the first docstring line.
        supports_streaming: Whether the tool may be streamed. Generator
            functions are always treated as streaming.
    """
    if isinstance(func, str):
        description, func = func, None
    spec = ToolSpec(name=name, description=description, supports_streaming=bool(supports_streaming))

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@tool can only decorate callables, got {type(f).__name__}")
        setattr(f, _SPEC_ATTR, spec)
        return f

    return mark(func) if func is not None else mark


def get_tool_spec(obj: Any) -> Optional[ToolSpec]:
    """Return the :class:`ToolSpec` attached by ``@tool`` (also through static/class methods)."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    spec = getattr(obj, _SPEC_ATTR, None)
    return spec if isinstance(spec, ToolSpec) else None


def build_tool_info(attr_name: str, spec: ToolSpec, func: Callable[..., Any]) -> ToolInfo:
    """Introspect a bound tool method into a :class:`ToolInfo`."""
    signature = inspect.signature(func)
    is_generator = inspect.isgeneratorfunction(func)
    is_async_generator = inspect.isasyncgenfunction(func)
    return ToolInfo(
        name=spec.name or attr_name,
        description=spec.description if spec.description is not None else _first_doc_line(func),
        parameters=tuple(
            _parameter_info(p)
            for p in signature.parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ),
        supports_streaming=spec.supports_streaming or is_generator or is_async_generator,
        is_async=inspect.iscoroutinefunction(func),
        is_generator=is_generator,
        is_async_generator=is_async_generator,
        func=func,
        signature=signature,
    )


def _first_doc_line(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _parameter_info(param: inspect.Parameter) -> ParameterInfo:
    type_name = _annotation_name(param.annotation)
    if param.default is inspect.Parameter.empty:
        return ParameterInfo(param.name, type_name, required=True)
    try:
        default_json = json.dumps(param.default, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return ParameterInfo(param.name, type_name, required=False)
    return ParameterInfo(param.name, type_name, required=False, default=param.default, default_json=default_json)


def _annotation_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "any"
    if isinstance(annotation, str):
        return "any" if annotation in ("Any", "typing.Any") else annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")
