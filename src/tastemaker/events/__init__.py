"""Events: the typed schema and the all-or-nothing batch decoder."""

from tastemaker.events.schema import Context, Event, EventBatch, EventType
from tastemaker.events.validate import EventProblem, InvalidBatchError, decode_batch

__all__ = [
    "Context",
    "Event",
    "EventBatch",
    "EventProblem",
    "EventType",
    "InvalidBatchError",
    "decode_batch",
]
