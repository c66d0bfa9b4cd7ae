from __future__ import annotations

import msgspec
import pytest

from tastemaker.events import Event, EventType, InvalidBatchError, decode_batch

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
