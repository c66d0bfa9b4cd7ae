from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from tastemaker.data.synthetic import Shop, ShopSpec, generate_shop


def test_same_seed_same_shop_and_events() -> None:
    spec = ShopSpec(n_users=50, n_items=100, seed=11)
    a, b = generate_shop(spec), generate_shop(spec)
    assert a.catalog().ids.tolist() == b.catalog().ids.tolist()
    assert list(a.events()) == list(b.events())
    other = generate_shop(ShopSpec(n_users=50, n_items=100, seed=12))
    assert list(other.events()) != list(a.events())


def test_events_follow_hidden_tastes_and_zipf_popularity(shop: Shop) -> None:
    events = [e for chunk in shop.events() for e in chunk]
    assert len({e.event_id for e in events}) == len(events)
    cat = shop.catalog()
    in_taste = [
        cat.category_names[cat.category[cat.index[e.item_id]]]
        in shop.taste(int(e.user_id[4:])).categories
        for e in events
    ]
    assert np.mean(in_taste) > 0.8
    counts = sorted(Counter(e.item_id for e in events).values(), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]  # a head and a long tail


def test_sessions_are_separated_by_long_gaps(shop: Shop) -> None:
    by_user: dict[str, list[float]] = defaultdict(list)
    for chunk in shop.events():
        for e in chunk:
            by_user[e.user_id].append(e.ts)
    gaps = np.concatenate([np.diff(sorted(ts)) for ts in by_user.values()])
    assert (gaps > 3600).any()  # several sessions per user
    assert ((gaps < 1800) | (gaps > 3600)).all()  # nothing ambiguous near the 30-minute gap


def test_embeddings_reflect_category_and_brand(shop: Shop) -> None:
    cat = shop.catalog()
    sim = cat.embedding @ cat.embedding.T
    same_cat = cat.category[:, None] == cat.category[None, :]
    same_brand = cat.brand[:, None] == cat.brand[None, :]
    off = ~np.eye(len(cat), dtype=bool)
    assert sim[same_cat & same_brand & off].mean() > sim[same_cat & ~same_brand].mean()
    assert sim[same_cat & ~same_brand].mean() > sim[~same_cat].mean() + 0.3


def test_scales_to_a_large_catalog_without_materializing_all_events() -> None:
    big = generate_shop(ShopSpec(n_users=1_000_000, n_items=100_000, seed=1))
    assert len(big.catalog()) == 100_000
    first = next(iter(big.events(chunk_users=1000)))
    assert {e.user_id for e in first} <= {f"user{i:07d}" for i in range(1000)}
