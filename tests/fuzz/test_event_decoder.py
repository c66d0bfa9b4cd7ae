"""hypothesis on the event decoder: whatever the bytes, `decode_batch` returns events or raises
`InvalidBatchError`, never anything else."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tastemaker.events import Event, EventLimits, InvalidBatchError, decode_batch

NOW = 1_760_000_000.0
LIMITS = EventLimits()
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.text(max_size=200) | json_values,
        "user_id": st.text(max_size=200) | json_values,
        "item_id": st.text(max_size=200) | json_values,
        "type": st.sampled_from(["view", "click", "rate", "teleport"]) | json_values,
        "ts": st.floats(allow_nan=False) | st.integers() | json_values,
        "session_id": st.none() | st.text(max_size=200),
        "value": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "device": st.text(max_size=70),
                "extra": st.dictionaries(st.text(max_size=70), st.text(max_size=70)),
            },
        )
        | json_values,
    },
)


def _decode(body: bytes) -> None:
    try:
        events = decode_batch(body, LIMITS, now=NOW)
    except InvalidBatchError as exc:
        problems = exc.problems
        assert problems, "a refusal names its problems"
        return
    assert events
    assert all(isinstance(e, Event) for e in events)
    for e in events:
        assert len(e.user_id.encode()) <= LIMITS.max_id_bytes
        assert e.ts <= NOW + LIMITS.max_future_s


@SETTINGS
@given(st.binary(max_size=4096))
def test_any_bytes_decode_or_are_refused(body: bytes) -> None:
    _decode(body)


@SETTINGS
@given(
    st.lists(event_like | json_values, min_size=0, max_size=6),
    st.binary(max_size=8),
    st.floats(0, 1),
)
def test_near_valid_batches_decode_or_are_refused(
    events: list[object], junk: bytes, where: float
) -> None:
    body = msgspec.json.encode({"events": events})
    _decode(body)
    at = int(len(body) * where)
    _decode(body[:at] + junk + body[at:])  # anything spliced in (inside a string too)
    _decode(body + junk)  # trailing bytes
    _decode(body[: len(body) // 2] + junk)  # truncated, then anything (invalid UTF-8 too)


@SETTINGS
@given(st.integers(0, 50_000), st.sampled_from([b"[", b"{", b'{"a":', b'[{"events":']))
def test_deep_nesting_is_refused(depth: int, opener: bytes) -> None:
    _decode(b'{"events": [' + opener * depth + b"]}")
    _decode(b'{"events": [{"context": {"extra": ' + opener * depth)
