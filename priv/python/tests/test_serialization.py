"""Encoding of results and chunks: what cannot cross is refused clearly."""

from typing import Any

import pytest

from snakepit_bridge.errors import PYTHON, VALIDATION, ToolFailure
from snakepit_bridge.serialization import MAX_DEPTH, encode_chunk, encode_result


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


def test_values_deeper_than_python_can_encode_are_refused_with_their_path() -> None:
    with pytest.raises(ToolFailure) as raised:
        encode_result(nested(5_000))
    failure = raised.value
    assert (failure.category, failure.error_type) == (VALIDATION, "TooDeep")
    # Two levels per step: the dict, then the list.
    path = '["a"][0]' * (MAX_DEPTH // 2)
    assert f"cannot receive result{path} from Python" in failure.message
    assert f"result{path}[" not in failure.message


def test_chunks_name_their_root() -> None:
    with pytest.raises(ToolFailure) as raised:
        encode_chunk(nested(5_000))
    assert "cannot receive chunk[" in raised.value.message


def test_a_cyclic_value_is_refused_as_too_deep() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ToolFailure) as raised:
        encode_result(cyclic)
    assert raised.value.error_type == "TooDeep"


def test_values_within_the_limit_encode() -> None:
    assert encode_result(nested(MAX_DEPTH // 2))[1] is False


def test_nan_and_huge_integers_are_serialization_errors() -> None:
    for value in (float("nan"), float("inf"), 2**20_000):
        with pytest.raises(ToolFailure) as raised:
            encode_result(value)
        assert (raised.value.category, raised.value.error_type) == (PYTHON, "SerializationError")


def test_shared_references_are_walked_once_per_depth() -> None:
    # 2**40 paths through 40 shared lists, beside a chain too deep to encode:
    # the path is found without walking every path.
    shared: list = []
    for _ in range(40):
        shared = [shared, shared]
    with pytest.raises(ToolFailure) as raised:
        encode_result([nested(5_000), shared])
    assert raised.value.error_type == "TooDeep"
    assert "cannot receive result[0]" in raised.value.message
