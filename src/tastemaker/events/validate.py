"""Decode a batch of events, all or nothing, naming every problem by index and field."""

from __future__ import annotations

import re
import time

import msgspec

from tastemaker import safejson
from tastemaker.events.limits import EventLimits, check_events
from tastemaker.events.schema import TS_FLOOR, Event, EventBatch, EventType

__all__ = ["EventProblem", "InvalidBatchError", "decode_batch"]

_batch_decoder = msgspec.json.Decoder(EventBatch)
_event_decoder = msgspec.json.Decoder(Event)
# msgspec reports the failing location as `... - at `$.field[0]``; we lift the path out so the
# client gets `field` separately from the message.
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


class EventProblem(msgspec.Struct, frozen=True):
    """One reason an event was refused."""

    index: int
    field: str
    error: str


class InvalidBatchError(ValueError):
    """The batch was refused whole; `problems` lists each bad event by index and field."""

    def __init__(self, problems: list[EventProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"events[{p.index}].{p.field}: {p.error}" for p in problems))


_DEFAULT_LIMITS = EventLimits()
# The schema's lower bound on `ts`, as msgspec words it; reworded to say what it is.
_FLOOR_ERROR = f"Expected `float` >= {TS_FLOOR!r}"


def _problem(index: int, exc: msgspec.ValidationError) -> EventProblem:
    text = str(exc)
    match = _PATH.search(text)
    if match is None:
        return EventProblem(index=index, field="", error=text)
    path = match.group("path").lstrip(".")
    return EventProblem(index=index, field=path, error=text[: match.start()])


def _reworded(p: EventProblem) -> EventProblem:
    if p.field == "ts" and p.error == _FLOOR_ERROR:
        error = (
            f"before {TS_FLOOR:.0f} (2001-01-01T00:00:00Z), the date floor of accepted timestamps "
            "(seconds since the Unix epoch)"
        )
        return EventProblem(p.index, p.field, error)
    return p


_FIELDS = {f.name: f for f in msgspec.structs.fields(Event)}


def _field_problems(index: int, raw: msgspec.Raw, first: EventProblem) -> list[EventProblem]:
    """Every bad field of one event. msgspec stops at the first error; on this (rare) error
    path we check field by field so the client can fix them all in one go."""
    try:
        obj = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return [first]
    if not isinstance(obj, dict):
        return [first]
    problems = [
        EventProblem(index, name, "missing required field")
        for name, f in _FIELDS.items()
        if f.required and name not in obj
    ]
    for key, value in obj.items():
        field = _FIELDS.get(key)
        if field is None:
            problems.append(EventProblem(index, key, "unknown field"))
            continue
        try:
            msgspec.convert(value, field.type)
        except msgspec.ValidationError as exc:
            sub = _problem(index, exc)
            problems.append(
                EventProblem(index, ".".join(filter(None, (key, sub.field))), sub.error)
            )
    return problems or [first]


def decode_batch(
    body: bytes,
    limits: EventLimits = _DEFAULT_LIMITS,
    *,
    max_depth: int = 32,
    now: float | None = None,
) -> list[Event]:
    """Decode `{"events": [...]}`. Raises `InvalidBatchError` naming every bad event (and
    nothing else, whatever the bytes); returns the events only when all of them are valid and
    within `limits` (`now`, default the clock, bounds future timestamps), so a caller never
    writes half a batch.

    Repeated `event_id`s of one user are not an error: at-least-once senders resend whole
    batches, and the stream processor counts each id once. One id for two users is."""
    try:
        batch = safejson.decode(_batch_decoder, body, max_depth)
    except msgspec.ValidationError as exc:
        raise InvalidBatchError([_problem(-1, exc)]) from exc
    except msgspec.DecodeError as exc:
        problem = EventProblem(index=-1, field="", error=f"malformed JSON: {exc}")
        raise InvalidBatchError([problem]) from exc
    except safejson.UnsafeJSONError as exc:
        raise InvalidBatchError([EventProblem(index=-1, field="", error=str(exc))]) from exc
    events: list[Event] = []
    problems: list[EventProblem] = []
    for index, raw in enumerate(batch.events):
        try:
            event = _event_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            problems.extend(_field_problems(index, raw, _problem(index, exc)))
            continue
        except UnicodeDecodeError as exc:
            error = f"a string is not valid UTF-8 ({exc.reason})"
            problems.append(EventProblem(index=index, field="", error=error))
            continue
        except (msgspec.DecodeError, RecursionError) as exc:
            problems.append(EventProblem(index=index, field="", error=f"malformed JSON: {exc}"))
            continue
        if event.type is EventType.ERASE:
            problems.append(
                EventProblem(
                    index=index,
                    field="type",
                    error="'erase' is written by DELETE /v1/users/{id}, not sent as an event",
                )
            )
            continue
        events.append(event)
    if problems:
        # An event nested past the limit is named as that (safejson.decode's reasoning).
        if (why := safejson.depth_problem(body, max_depth)) is not None:
            raise InvalidBatchError([EventProblem(index=-1, field="", error=why)])
        raise InvalidBatchError([_reworded(p) for p in problems])
    found = check_events(events, limits, time.time() if now is None else now)
    if found:
        raise InvalidBatchError([EventProblem(i, field, error) for i, field, error in found])
    return events
