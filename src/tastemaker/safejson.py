"""JSON decoding that fails only with `UnsafeJSONError` or msgspec's own errors.

msgspec recurses once per nesting level and counts against Python's recursion limit, so a
2 KB body nested a thousand deep raises `RecursionError` (deeper still in a worker thread,
whose stack starts lower); a string that is not valid UTF-8 raises `UnicodeDecodeError`.
Both are the client's fault and must answer 400, so bodies are measured before decoding
(`json_depth`) and both errors are turned into `UnsafeJSONError`.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
import numpy as np

__all__ = ["UnsafeJSONError", "decode", "depth_problem", "json_depth"]

T = TypeVar("T")

_OPEN = (ord("["), ord("{"))
_BRACKET = np.zeros(256, bool)
_BRACKET[[ord(c) for c in "[]{}"]] = True


class UnsafeJSONError(ValueError):
    """The body is nested too deep or is not UTF-8; the message says which."""


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in `body`, brackets inside strings not
    counted. Exact for valid JSON; for invalid JSON it may be off, which is harmless: the
    decoder refuses it (and a recursion it still runs into is caught by `decode`)."""
    a = np.frombuffer(body, np.uint8)
    quotes = np.flatnonzero(a == ord('"'))
    slashes = np.flatnonzero(a == ord("\\"))
    if slashes.size and quotes.size:
        # A quote is escaped when an odd run of backslashes ends right before it.
        starts = np.ones(slashes.size, bool)
        starts[1:] = np.diff(slashes) != 1
        run_start = slashes[np.maximum.accumulate(np.where(starts, np.arange(slashes.size), 0))]
        at = np.searchsorted(slashes, quotes - 1)
        at_ok = at < slashes.size
        before = np.zeros(quotes.size, bool)
        before[at_ok] = slashes[at[at_ok]] == quotes[at_ok] - 1
        run = np.zeros(quotes.size, np.int64)
        run[before] = quotes[before] - run_start[at[before]]
        quotes = quotes[run % 2 == 0]
    brackets = np.flatnonzero(_BRACKET[a])
    outside = brackets[np.searchsorted(quotes, brackets) % 2 == 0]
    if outside.size == 0:
        return 0
    kinds = a[outside]
    steps = np.where((kinds == _OPEN[0]) | (kinds == _OPEN[1]), 1, -1)
    return int(np.cumsum(steps).max())


def depth_problem(body: bytes, max_depth: int) -> str | None:
    """Why `body` is nested too deep (None: it is not)."""
    # Fewer opening brackets than the limit cannot nest past it.
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return None
    depth = json_depth(body)
    if depth <= max_depth:
        return None
    return f"JSON nested {depth} deep, over the limit of {max_depth} (serving.max_json_depth)"


def decode(decoder: msgspec.json.Decoder[T], body: bytes, max_depth: int) -> T:
    """`decoder.decode(body)`; raises msgspec's `ValidationError` / `DecodeError`, or
    `UnsafeJSONError` for a body nested deeper than `max_depth` or not UTF-8.

    The depth is measured only when decoding fails: every request type nests at most 5 deep
    and the config keeps `max_json_depth` at 8 or more, so a body that decodes is within the
    limit, and a well-formed request pays nothing for the check."""
    try:
        return decoder.decode(body)
    except (
        msgspec.ValidationError,
        msgspec.DecodeError,
        RecursionError,
        UnicodeDecodeError,
    ) as exc:
        if (why := depth_problem(body, max_depth)) is not None:
            raise UnsafeJSONError(why) from exc
        if isinstance(exc, RecursionError):
            raise UnsafeJSONError("JSON nested too deep to decode") from exc
        if isinstance(exc, UnicodeDecodeError):
            raise UnsafeJSONError(f"a string is not valid UTF-8 ({exc.reason})") from exc
        raise
