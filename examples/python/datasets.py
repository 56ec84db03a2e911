"""Plain Python the universal-call example calls: no adapter, no tools."""

from __future__ import annotations

from typing import Dict, Iterator


def load_large_dataset(rows: int = 1000) -> Iterator[Dict[str, int]]:
    """Rows made one by one, as a database cursor or a file reader would."""
    for i in range(rows):
        yield {"id": i, "value": i * i}


class RunningMean:
    """State kept in the worker, reached from Elixir through a ref."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> float:
        self.count += 1
        self.total += value
        return self.total / self.count

    def __repr__(self) -> str:
        return f"RunningMean(count={self.count}, total={self.total})"
