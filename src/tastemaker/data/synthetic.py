"""A seeded synthetic shop: items, users with hidden tastes, and their event stream.

Users have hidden tastes over categories (a sparse Dirichlet draw), a few favourite brands and
a preferred price band. Item popularity is Zipf-like. Each user has sessions separated by
gaps far longer than 30 minutes; in a session the user looks at items of the categories they
like, picked by popularity and by how well brand and price fit. Embeddings reflect category
and brand, so a recommender that learns the tastes can be checked against them.

Everything is vectorized over a chunk of users, so 1M users and 100K items take minutes, not
hours, and events stream out chunk by chunk instead of living in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np
import numpy.typing as npt

from tastemaker.arrays import rank_within
from tastemaker.catalog import Catalog
from tastemaker.events import Context, Event, EventType

__all__ = ["Shop", "ShopSpec", "Taste", "generate_shop"]

PRICE_BANDS = np.array([10.0, 25, 50, 100, 250, 500])  # same bands as the default histogram
_DEVICES = np.array(["mobile", "desktop", "tablet"])
_REGIONS = np.array(["eu", "us", "apac"])


class ShopSpec(msgspec.Struct, frozen=True, kw_only=True):
    n_users: int = 20_000
    n_items: int = 5_000
    n_categories: int = 20
    n_brands: int = 80
    dim: int = 32
    days: float = 14.0
    sessions_per_user: float = 3.0
    views_per_session: float = 6.0
    seed: int = 7
    start_ts: float = 1_760_000_000.0  # 2025-10-09T08:53:20Z


class Taste(msgspec.Struct, frozen=True):
    """A user's hidden taste, for showing beside their recommendations."""

    categories: dict[str, float]
    brands: list[str]
    price_band: int


class Shop:
    """The generated catalog and users; `events()` streams the interactions in chunks."""

    def __init__(self, spec: ShopSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        c, b, n = spec.n_categories, spec.n_brands, spec.n_items
        self.category_names = [f"cat{i:02d}" for i in range(c)]
        self.brand_names = [f"brand{i:03d}" for i in range(b)]
        # Each brand sells in two categories; items take a brand of their category.
        brand_cats = rng.integers(0, c, size=(b, 2))
        cat_weights = 1.0 / np.arange(1, c + 1) ** 0.6
        self.item_category = rng.choice(c, size=n, p=cat_weights / cat_weights.sum())
        self.item_brand = np.empty(n, np.int64)
        for cat in range(c):
            mask = self.item_category == cat
            brands = np.flatnonzero((brand_cats == cat).any(axis=1))
            if brands.size == 0:
                brands = rng.choice(b, size=2, replace=False)
            self.item_brand[mask] = rng.choice(brands, size=int(mask.sum()))
        cat_median = np.exp(rng.uniform(np.log(15), np.log(300), size=c))
        brand_premium = np.exp(rng.normal(0, 0.4, size=b))
        self.item_price = np.round(
            cat_median[self.item_category]
            * brand_premium[self.item_brand]
            * np.exp(rng.normal(0, 0.35, size=n)),
            2,
        )
        self.item_band = np.searchsorted(PRICE_BANDS, self.item_price, side="right")
        cat_vec = rng.normal(size=(c, spec.dim))
        brand_vec = rng.normal(size=(b, spec.dim))
        emb = (
            cat_vec[self.item_category]
            + 0.6 * brand_vec[self.item_brand]
            + 0.35 * rng.normal(size=(n, spec.dim))
        )
        self.item_embedding = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        zipf = 1.0 / np.arange(1, n + 1) ** 1.05
        self.item_pop = zipf[rng.permutation(n)]
        self.item_ids = np.array([f"item{i:06d}" for i in range(n)])
        self._cat_items = [np.flatnonzero(self.item_category == cat) for cat in range(c)]
        self._cat_cdf = []
        for items in self._cat_items:
            p = self.item_pop[items]
            self._cat_cdf.append(np.cumsum(p) / p.sum())
        # Users: sparse taste over categories, three favourite brands, a price band.
        urng = np.random.default_rng(spec.seed + 1)
        taste = urng.dirichlet(np.full(c, 0.15), size=spec.n_users)
        # Small catalogs can leave a category without items: nobody can shop there.
        taste *= np.array([items.size > 0 for items in self._cat_items])
        self.user_taste = taste / np.maximum(taste.sum(axis=1, keepdims=True), 1e-12)
        self.user_brands = urng.integers(0, b, size=(spec.n_users, 3))
        self.user_band = urng.integers(0, len(PRICE_BANDS) + 1, size=spec.n_users)
        self.user_ids = np.array([f"user{i:07d}" for i in range(spec.n_users)])

    def catalog(self) -> Catalog:
        return Catalog(
            ids=self.item_ids.tolist(),
            titles=[
                f"{self.brand_names[bi]} {self.category_names[ci]} #{i}"
                for i, (ci, bi) in enumerate(zip(self.item_category, self.item_brand, strict=True))
            ],
            categories=[self.category_names[i] for i in self.item_category],
            brands=[self.brand_names[i] for i in self.item_brand],
            prices=self.item_price,
            embeddings=self.item_embedding,
        )

    def taste(self, user: int) -> Taste:
        t = self.user_taste[user]
        top = np.argsort(-t)[:3]
        return Taste(
            categories={self.category_names[i]: round(float(t[i]), 2) for i in top if t[i] > 0.05},
            brands=[self.brand_names[i] for i in self.user_brands[user]],
            price_band=int(self.user_band[user]),
        )

    def events(self, chunk_users: int = 20_000) -> Iterator[list[Event]]:
        """All events, user chunk by user chunk; within a chunk sorted by time."""
        for start in range(0, self.spec.n_users, chunk_users):
            users = np.arange(start, min(start + chunk_users, self.spec.n_users))
            yield self._chunk(users, np.random.default_rng((self.spec.seed, start)))

    def _pick_items(
        self, rng: np.random.Generator, users: npt.NDArray[np.int64], cats: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """For each (user, category): draw 8 items by popularity, keep the one whose brand and
        price fit the user best (with noise)."""
        k = 8
        picks = np.empty((users.size, k), np.int64)
        u = rng.random((users.size, k))
        for cat in np.unique(cats):
            m = cats == cat
            idx = np.searchsorted(self._cat_cdf[cat], u[m]).clip(0, self._cat_items[cat].size - 1)
            picks[m] = self._cat_items[cat][idx]
        brand_fit = (self.item_brand[picks][:, :, None] == self.user_brands[users][:, None, :]).any(
            axis=2
        )
        price_fit = -np.abs(self.item_band[picks] - self.user_band[users][:, None])
        utility = 1.5 * brand_fit + 0.8 * price_fit + rng.gumbel(size=picks.shape)
        return np.asarray(picks[np.arange(users.size), utility.argmax(axis=1)], np.int64)

    def _chunk(self, users: npt.NDArray[np.int64], rng: np.random.Generator) -> list[Event]:
        spec = self.spec
        n_sessions = 1 + rng.poisson(spec.sessions_per_user - 1, size=users.size)
        s_user = np.repeat(users, n_sessions)
        # Session starts: spread over the period; sessions of one user at least 2 h apart.
        s_start = spec.start_ts + rng.uniform(0, spec.days * 86400, size=s_user.size)
        order = np.lexsort((s_start, s_user))
        s_user, s_start = s_user[order], s_start[order]
        s_start = s_start + 7200 * rank_within(s_user)
        n_views = 1 + rng.poisson(spec.views_per_session - 1, size=s_user.size)
        v_user = np.repeat(s_user, n_views)
        v_ts = np.repeat(s_start, n_views) + _cumsum_within(
            rng.exponential(45.0, v_user.size), n_views
        )
        v_cat = _sample_rows(rng, self.user_taste[v_user])
        v_item = self._pick_items(rng, v_user, v_cat)
        click = rng.random(v_user.size) < 0.35
        cart = click & (rng.random(v_user.size) < 0.25)
        buy = cart & (rng.random(v_user.size) < 0.5)
        parts = [(v_user, v_item, v_ts, EventType.VIEW)]
        for mask, delay, etype in (
            (click, 5.0, EventType.CLICK),
            (cart, 20.0, EventType.ADD_TO_CART),
            (buy, 40.0, EventType.PURCHASE),
        ):
            parts.append((v_user[mask], v_item[mask], v_ts[mask] + delay, etype))
        e_user = np.concatenate([p[0] for p in parts])
        e_item = np.concatenate([p[1] for p in parts])
        e_ts = np.concatenate([p[2] for p in parts])
        e_type = np.concatenate([np.full(p[0].size, i) for i, p in enumerate(parts)])
        types = [p[3] for p in parts]
        order = np.argsort(e_ts, kind="stable")
        device = _DEVICES[users % 3]
        region = _REGIONS[(users // 3) % 3]
        base = int(users[0])
        return [
            Event(
                event_id=f"{self.user_ids[uu]}-{int(tt * 1000)}-{ty}-{seq}",
                user_id=str(self.user_ids[uu]),
                item_id=str(self.item_ids[ii]),
                type=types[ty],
                ts=round(float(tt), 3),
                value=float(self.item_price[ii]) if ty == 3 else None,
                context=Context(device=str(device[uu - base]), region=str(region[uu - base])),
            )
            for seq, (uu, ii, tt, ty) in enumerate(
                zip(
                    e_user[order].tolist(),
                    e_item[order].tolist(),
                    e_ts[order].tolist(),
                    e_type[order].tolist(),
                    strict=True,
                )
            )
        ]


def _cumsum_within(
    values: npt.NDArray[np.float64], lengths: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """Cumulative sums restarting at each group of `lengths` consecutive values."""
    total = np.cumsum(values)
    first = np.cumsum(lengths) - lengths
    return np.asarray(total - np.repeat(total[first] - values[first], lengths), np.float64)


def _sample_rows(rng: np.random.Generator, probs: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """One index per row, drawn from that row's probabilities."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.asarray((cdf < u).sum(axis=1).clip(0, probs.shape[1] - 1), np.int64)


def generate_shop(spec: ShopSpec | None = None) -> Shop:
    return Shop(spec or ShopSpec())
