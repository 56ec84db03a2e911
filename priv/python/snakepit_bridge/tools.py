"""The ``@tool`` decorator and the metadata discovered from tool methods."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple, TypeVar, Union, overload

__all__ = ["ToolSpec", "ParameterInfo", "ToolInfo", "KeywordCheck", "tool", "get_tool_spec", "build_tool_info"]

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
        keywords: The checks of keyword arguments against ``signature``,
            precomputed so that a call need not bind them (see
            :meth:`keyword_error`).
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
    keywords: KeywordCheck = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.keywords is None:
            object.__setattr__(self, "keywords", KeywordCheck(self.signature))

    def keyword_error(self, arguments: Mapping[str, Any]) -> Optional[str]:
        """Why calling the tool with ``**arguments`` would not bind, or ``None`` if it would."""
        return self.keywords.error(arguments)

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


class KeywordCheck:
    """Whether keyword arguments bind to a signature, without binding them.

    ``Signature.bind`` costs more than a small tool call itself; a call with
    keywords only needs three set checks, prepared once here. Signatures
    that keywords alone cannot satisfy (required positional-only
    parameters) or that take ``*args`` are checked with ``Signature.bind``.
    """

    __slots__ = ("_accepted", "_any_keyword", "_exact", "_required", "_signature")

    def __init__(self, signature: inspect.Signature) -> None:
        params = list(signature.parameters.values())
        self._signature = signature
        self._any_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
        keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self._accepted = frozenset(p.name for p in params if p.kind in keyword_kinds)
        self._required = frozenset(
            p.name for p in params if p.kind in keyword_kinds and p.default is inspect.Parameter.empty
        )
        self._exact = not any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in params)

    def error(self, arguments: Mapping[str, Any]) -> Optional[str]:
        """The ``TypeError`` message ``**arguments`` would raise, or ``None``."""
        if not self._exact:
            try:
                self._signature.bind(**arguments)
            except TypeError as exc:
                return str(exc)
            return None
        missing = self._required.difference(arguments)
        if missing:
            names = ", ".join(repr(name) for name in sorted(missing))
            return f"missing a required argument: {names}"
        if not self._any_keyword:
            unexpected = set(arguments).difference(self._accepted)
            if unexpected:
                names = ", ".join(repr(name) for name in sorted(unexpected))
                return f"got an unexpected keyword argument {names}"
        return None


def build_tool_info(attr_name: str, spec: ToolSpec, func: Callable[..., Any]) -> ToolInfo:
    """Introspect a bound tool method into a :class:`ToolInfo`."""
    signature = inspect.signature(func)
    is_generator = inspect.isgeneratorfunction(func)
    is_async_generator = inspect.isasyncgenfunction(func)
    return ToolInfo(
        name=spec.name or attr_name,
        description=spec.description if spec.description is not None else _first_doc_line(func),
        parameters=tuple(
            _parameter_info(p) for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
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
