"""Category affinity: popular items of the categories the user engages with most."""

from __future__ import annotations

import numpy as np

from tastemaker.features.layout import PROFILE, SESSION
from tastemaker.retrieval.base import Candidates, RetrievalContext
from tastemaker.retrieval.popular import popular_candidates

__all__ = ["CategoryRetriever"]


class CategoryRetriever:
    """Splits `k` over the user's top categories by affinity (long-term plus session).
    Scores are affinity share plus a small popularity term inside the category."""

    name = "category"

    def __init__(self, top_categories: int = 3) -> None:
        self.top_categories = top_categories

    def retrieve(self, ctx: RetrievalContext, k: int) -> Candidates:
        affinity: dict[str, float] = {}
        for family, column in ((PROFILE, "category_intensity"), (SESSION, "session_category")):
            cell = ctx.user.get(family, {}).get(column)
            if cell is None:
                continue
            values = {c: v for c, v in cell.value["v"].items() if v > 0}
            total = sum(values.values())
            for c, v in values.items():
                affinity[c] = affinity.get(c, 0.0) + v / total
        if not affinity:
            return Candidates.empty()
        best = sorted(affinity.items(), key=lambda kv: -kv[1])[: self.top_categories]
        total = sum(v for _, v in best)
        parts = []
        for category, weight in best:
            share = weight / total
            got = popular_candidates(ctx, "c:" + category, max(1, round(k * share)))
            parts.append(Candidates(got.rows, (share + 0.1 * got.scores).astype(np.float32)))
        if not parts:
            return Candidates.empty()
        return Candidates(
            np.concatenate([p.rows for p in parts]), np.concatenate([p.scores for p in parts])
        )
