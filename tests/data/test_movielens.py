"""MovieLens-100K from the recbole wheel on PyPI (downloaded once into the user cache)."""

from __future__ import annotations

import pytest

from tastemaker.data.movielens import default_cache_dir, load_movielens_100k


@pytest.mark.network
def test_movielens_100k_loads_with_the_known_shape() -> None:
    ml = load_movielens_100k()
    assert ml.directory.is_relative_to(default_cache_dir())
    assert len(ml.ratings) == 100_000
    assert (ml.n_users, ml.n_items) == (943, 1682)
    assert set(ml.rating.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (ml.ts[1:] >= ml.ts[:-1]).all()
    assert ml.titles[0] == "Toy Story"
    assert "Animation" in ml.genres[0]
    events = ml.events()
    assert events[0].type == "rate"
    assert events[0].value in {1.0, 2.0, 3.0, 4.0, 5.0}
    catalog = ml.catalog()
    assert len(catalog) == 1682
    assert catalog.index["1"] == 0


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASTEMAKER_CACHE_DIR", "/tmp/tm-cache")
    assert str(default_cache_dir()) == "/tmp/tm-cache"
    monkeypatch.delenv("TASTEMAKER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    assert str(default_cache_dir()) == "/tmp/xdg/tastemaker"
