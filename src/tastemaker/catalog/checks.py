"""Item changes checked before anything is written: ids, numbers, embeddings (`check_items`).
A refused change is named by index and field, the same shape as a refused event's problem."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tastemaker.catalog.catalog import Catalog, ItemChange
from tastemaker.events import EventProblem, id_problem

__all__ = ["EMBEDDING_MAX", "EMBEDDING_MIN", "ItemProblem", "check_items"]


# Embedding components past this would overflow float32 once squared for the norm (and
# anything past 3.4e38 is infinite as float32); a vector with none at least EMBEDDING_MIN
# from zero is all zeros as float32 (1e-300 is) or has no usable direction.
EMBEDDING_MAX = 1e9
EMBEDDING_MIN = 1e-9

# The same shape as a refused event's problem: {index, field, error}.
ItemProblem = EventProblem


def check_items(
    changes: Sequence[ItemChange], catalog: Catalog, max_id_bytes: int = 128
) -> list[ItemProblem]:
    """What is wrong with each change, by index and field (nothing: an empty list). A change
    that passes is one `Catalog.apply` takes: ids within `max_id_bytes` of UTF-8 (they are
    store keys), every embedding component within +-EMBEDDING_MAX and one at least
    EMBEDDING_MIN from zero, so the float32 vector and its norm are finite and not zero."""
    problems = []
    for i, c in enumerate(changes):
        if (why := id_problem(c.item_id, max_id_bytes)) is not None:
            problems.append(ItemProblem(i, "item_id", why))
        if c.deleted:
            continue
        for name in ("category", "brand"):
            if not getattr(c, name):
                problems.append(ItemProblem(i, name, "required for an upsert"))
        if len(c.embedding) != catalog.dim:
            problems.append(
                ItemProblem(
                    i,
                    "embedding",
                    f"expected {catalog.dim} numbers, got {len(c.embedding)}",
                )
            )
            continue
        emb = np.abs(np.asarray(c.embedding, np.float64))
        if not np.all(emb <= EMBEDDING_MAX):  # NaN fails too
            problems.append(
                ItemProblem(i, "embedding", f"every number must be within +-{EMBEDDING_MAX:g}")
            )
        elif not np.any(emb >= EMBEDDING_MIN):
            problems.append(
                ItemProblem(
                    i,
                    "embedding",
                    f"all zero: at least one number must be {EMBEDDING_MIN:g} or more from 0",
                )
            )
    return problems
