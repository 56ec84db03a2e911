"""Functions and classes the universal-call tests call from Elixir."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any, AsyncIterator, Dict, Iterator, List


def numbers(count: int) -> Iterator[int]:
    """A generator of 0 .. count - 1."""
    yield from range(count)


async def async_numbers(count: int) -> AsyncIterator[int]:
    """An async generator of 0 .. count - 1, awaiting between items."""
    for i in range(count):
        await asyncio.sleep(0)
        yield i


def with_generator() -> Dict[str, Any]:
    """A dict holding a value and a generator (seed 003's example)."""
    return {"status": "ok", "data": (x * 2 for x in range(10))}


def fails_after(count: int) -> Iterator[int]:
    """Yields 0 .. count - 1, then raises ValueError."""
    yield from range(count)
    raise ValueError(f"failed after {count} items")


def endless(marker_path: str = "") -> Iterator[int]:
    """Counts forever; writes ``marker_path`` when it is closed."""
    try:
        i = 0
        while True:
            yield i
            i += 1
    finally:
        if marker_path:
            with open(marker_path, "w") as marker:
                marker.write("closed")


def slow(step_s: float, count: int = 100, marker_path: str = "") -> Iterator[int]:
    """Yields one item per ``step_s`` seconds; writes "started" to
    ``marker_path`` when it starts, "closed" when it is closed."""
    if marker_path:
        with open(marker_path, "w") as marker:
            marker.write("started")
    try:
        for i in range(count):
            time.sleep(step_s)
            yield i
    finally:
        if marker_path:
            with open(marker_path, "w") as marker:
                marker.write("closed")


def load_large_dataset(rows: int = 1000) -> Iterator[Dict[str, int]]:
    """Rows produced lazily."""
    for i in range(rows):
        yield {"id": i, "square": i * i}


def total(data: Dict[str, Any]) -> int:
    """Sums the iterable under ``data["xs"]``."""
    return sum(data["xs"])


def nested_bytes() -> List[Any]:
    return [b"\x00\xff", {"raw": b"abc"}]


async def later(value: Any) -> Any:
    """A coroutine function: the call awaits it."""
    await asyncio.sleep(0)
    return value


def pid() -> int:
    return os.getpid()


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = "p"


def point() -> Point:
    return Point(1, 2)


class Counter:
    """A stateful object held by reference."""

    def __init__(self) -> None:
        self.value = 0

    def increment(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def __repr__(self) -> str:
        return f"Counter(value={self.value})"


class Sized:
    """Iterable with a length, not an iterator."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))
