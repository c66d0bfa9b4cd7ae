from __future__ import annotations

import msgspec
import pytest

from tastemaker.events import Event, EventLimits, EventType, InvalidBatchError, decode_batch

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": 1.7e9}


def body(*events: object) -> bytes:
    return msgspec.json.encode({"events": list(events)})


def test_valid_batch_decodes_to_typed_events() -> None:
    events = decode_batch(body(GOOD, {**GOOD, "event_id": "e2", "type": "purchase", "value": 9.5}))
    assert [e.type for e in events] == [EventType.VIEW, EventType.PURCHASE]
    assert events[1].value == 9.5
    assert isinstance(events[0], Event)


def test_every_bad_event_is_named_by_index_and_field() -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(
            body(
                GOOD,
                {**GOOD, "type": "teleport"},
                {**GOOD, "ts": 1.7e12},  # milliseconds by mistake
                {k: v for k, v in GOOD.items() if k != "user_id"},
                {**GOOD, "context": {"region": 3}},
                {**GOOD, "colour": "red"},
            )
        )
    found = [(p.index, p.field, p.error) for p in info.value.problems]
    assert found == [
        (1, "type", "Invalid enum value 'teleport'"),
        (2, "ts", "Expected `float` <= 32503680000.0"),
        (3, "user_id", "missing required field"),
        (4, "context.region", "Expected `str | null`, got `int`"),
        (5, "colour", "unknown field"),
    ]


def test_all_bad_fields_of_one_event_are_named() -> None:
    bad = {"event_id": "", "user_id": 7, "type": "view", "ts": 1.0, "value": "x"}
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(body(GOOD, bad))
    assert {(p.index, p.field) for p in info.value.problems} == {
        (1, "item_id"),
        (1, "event_id"),
        (1, "user_id"),
        (1, "ts"),
        (1, "value"),
    }


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", ""),
        (b'{"events": []}', "events"),
        (b'{"events": {}}', "events"),
        (b"{}", ""),
    ],
)
def test_malformed_batches_are_refused(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(raw)
    assert info.value.problems[0].index == -1
    assert info.value.problems[0].field == field


def test_non_finite_value_is_refused() -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(
            b'{"events": [{"event_id": "e", "user_id": "u", "item_id": "i", '
            b'"type": "rate", "ts": 1.7e9, "value": 1e999}]}'
        )
    assert info.value.problems[0].field == "value"


def test_repeated_event_ids_are_not_an_error() -> None:
    assert len(decode_batch(body(GOOD, GOOD))) == 2


NOW = 1_760_000_000.0


def problems_of(*events: object, limits: EventLimits | None = None) -> list[tuple[int, str]]:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(body(*events), limits or EventLimits(), now=NOW)
    return [(p.index, p.field) for p in info.value.problems]


def test_ids_are_limited_in_bytes_not_characters() -> None:
    limits = EventLimits(max_id_bytes=12)
    assert decode_batch(body({**GOOD, "user_id": "a" * 12}), limits, now=NOW)
    assert decode_batch(body({**GOOD, "user_id": "用" * 4}), limits, now=NOW)  # 12 bytes
    assert problems_of({**GOOD, "user_id": "用" * 5}, limits=limits) == [(0, "user_id")]
    assert problems_of({**GOOD, "session_id": "é" * 7}, limits=limits) == [(0, "session_id")]
    assert problems_of(GOOD, {**GOOD, "event_id": "😀" * 4}, limits=limits) == [(1, "event_id")]


def test_timestamps_past_the_future_limit_are_refused() -> None:
    limits = EventLimits(max_future_s=60)
    assert decode_batch(body({**GOOD, "ts": NOW + 60}), limits, now=NOW)
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(body({**GOOD, "ts": NOW + 61}), limits, now=NOW)
    assert info.value.problems[0].field == "ts"
    assert "61 s in the future" in info.value.problems[0].error


def test_context_extra_is_limited() -> None:
    limits = EventLimits(max_extra_entries=2, max_extra_key_chars=3, max_extra_value_chars=4)
    ok = {**GOOD, "context": {"extra": {"abc": "defg", "x": ""}}}
    assert decode_batch(body(ok), limits, now=NOW)
    many = {**GOOD, "context": {"extra": {"a": "", "b": "", "c": ""}}}
    long_key = {**GOOD, "context": {"extra": {"abcd": ""}}}
    long_value = {**GOOD, "context": {"extra": {"a": "abcde"}}}
    assert problems_of(many, long_key, long_value, limits=limits) == [
        (0, "context.extra"),
        (1, "context.extra"),
        (2, "context.extra.a"),
    ]


def test_one_event_id_for_two_users_is_refused_naming_the_first() -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(body(GOOD, {**GOOD, "type": "click"}, {**GOOD, "user_id": "u2"}), now=NOW)
    (problem,) = info.value.problems
    assert (problem.index, problem.field) == (2, "event_id")
    assert "events[0]" in problem.error


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"events": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested 5002 deep"),
        (b'{"events": [{"context": {"extra": ' + b"{" * 100 + b"}" * 100, "nested"),
        (b'{"events": [{"event_id": "\xff"}]}', "UTF-8"),
        (b'{"ev\xffents": []}', "UTF-8"),
        (b'{"events": [{"context": {"extra": {"\xc3": "v"}}}]}', "UTF-8"),
    ],
)
def test_deep_or_non_utf8_batches_are_invalid_batches(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidBatchError) as info:
        decode_batch(raw, now=NOW)
    assert words in str(info.value)
