"""Tools that send values of every shape back to Elixir, for the conversion tests."""

import random
import struct
from typing import Any, Dict, Iterator, List

from snakepit_bridge.base_adapter import BaseAdapter, tool


def _nested(depth: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def _bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


class ConversionAdapter(BaseAdapter):
    """Values built in Python: nested, huge, exact, or with colliding keys."""

    @tool(description="Return the arguments unchanged")
    def echo(self, **kwargs: Any) -> Dict[str, Any]:
        return kwargs

    @tool(description="A value nested depth levels deep (lists or dicts)")
    def nested(self, depth: int, kind: str = "list") -> Any:
        return _nested(depth, kind)

    @tool(description="Stream one chunk nested depth levels deep", supports_streaming=True)
    def nested_chunk(self, depth: int) -> Iterator[Any]:
        yield {"ok": 1}
        yield {"deep": _nested(depth, "dict")}

    @tool(description="The bit patterns of the doubles received")
    def float_bits(self, values: List[float]) -> List[int]:
        return [_bits(v) for v in values]

    @tool(description="Random doubles (every bit pattern that is finite), with their bits")
    def random_doubles(self, count: int, seed: int) -> Dict[str, List[Any]]:
        rng = random.Random(seed)
        values: List[float] = []
        while len(values) < count:
            (value,) = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))
            if value == value and value not in (float("inf"), float("-inf")):
                values.append(value)
        return {"values": values, "bits": [_bits(v) for v in values]}

    @tool(description="Integers as Python computes them, and their decimal text")
    def integers(self, exponents: List[int]) -> List[Any]:
        out: List[Any] = []
        for e in exponents:
            for n in (2**e, -(2**e), 2**e - 1, -(2**e) + 1):
                out.append([n, str(n)])
        return out

    @tool(description="2 ** exponent")
    def power_of_two(self, exponent: int) -> int:
        return 2**exponent

    @tool(description="The decimal text of the integers received")
    def integer_texts(self, values: List[int]) -> List[str]:
        return [str(v) for v in values]

    @tool(description="A dict whose keys collide as JSON keys")
    def colliding_keys(self) -> Dict[Any, str]:
        return {1: "int", "1": "str"}

    @tool(description="Yield the size of each input", supports_streaming=True)
    def input_sizes(self, inputs: Iterator[Any]) -> Iterator[Dict[str, int]]:
        for item in inputs:
            yield {"size": len(item)}

    @tool(description="Read a session variable")
    def read_variable(self, name: str) -> Any:
        return self.session_context.get_variable(name)

    @tool(description="Write a session variable built in Python: 2**exponent and a double")
    def write_variable(self, name: str, exponent: int, double: float) -> None:
        self.session_context.set_variable(name, {"n": 2**exponent, "f": double})
