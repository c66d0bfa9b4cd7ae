"""What an aggregation sees and the protocol it implements.

An aggregation is a pure function `(state, facts) -> state`: the stream processor and the
offline replay call the same code, so training never sees features computed differently from
serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.events import EventType

__all__ = ["Aggregation", "Fact"]


class Fact(msgspec.Struct, frozen=True):
    """An event joined with the catalog attributes of its item (None for unknown items)."""

    ts: float
    type: EventType
    item_id: str
    session_id: str
    value: float | None = None
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    embedding: npt.NDArray[np.float32] | None = None


class Aggregation(Protocol):
    """One declared feature: its column `name` in `family`, and how facts update it."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    def apply(self, state: Any, facts: Sequence[Fact]) -> Any:
        """New state from the previous one (None at first) and the user's new facts in
        time order. Must not mutate `state`."""
        ...
