from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tastemaker.safejson import UnsafeJSONError, decode, json_depth


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(reference_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(reference_depth, value.values()), default=0)
    return 0


@pytest.mark.parametrize(
    "value",
    [
        0,
        "[[{",
        [],
        {"a": [1, {"b": []}]},
        ['\\"[', {"\\": ["]]]"]}],
        ["\\\\", [['x\\\\\\"{']]],
        {"k": "\\", "l": [[[[]]]]},
    ],
)
def test_json_depth_counts_brackets_outside_strings(value: Any) -> None:
    assert json_depth(json.dumps(value).encode()) == reference_depth(value)


def test_decode_refuses_deep_and_non_utf8_bodies_by_name() -> None:
    decoder = msgspec.json.Decoder(list[list[str]])  # a fixed shape, like every request
    assert decode(decoder, b'[["a"]]', 8) == [["a"]]
    with pytest.raises(UnsafeJSONError, match="nested 9 deep, over the limit of 8"):
        decode(decoder, b"[" * 9 + b"]" * 9, 8)
    with pytest.raises(UnsafeJSONError, match="nested"):
        decode(decoder, b"[" * 100_000, 8)
    with pytest.raises(UnsafeJSONError, match="UTF-8"):
        decode(decoder, b'[["\xff"]]', 8)
    with pytest.raises(msgspec.DecodeError):
        decode(decoder, b"[[],", 8)
    with pytest.raises(msgspec.ValidationError):
        decode(decoder, b"[[[]]]", 8)  # wrong shape, within the depth: msgspec's own error
