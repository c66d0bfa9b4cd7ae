"""Events: the typed schema and the all-or-nothing batch decoder."""

from tastemaker.events.limits import EventLimits, check_events, id_problem
from tastemaker.events.schema import Context, Event, EventBatch, EventType, idempotency_key
from tastemaker.events.validate import EventProblem, InvalidBatchError, decode_batch

__all__ = [
    "Context",
    "Event",
    "EventBatch",
    "EventLimits",
    "EventProblem",
    "EventType",
    "InvalidBatchError",
    "check_events",
    "decode_batch",
    "id_problem",
    "idempotency_key",
]
