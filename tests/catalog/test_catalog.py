from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tastemaker.catalog import Catalog, CatalogError, load_catalog, save_catalog


def small() -> Catalog:
    return Catalog(
        ids=["a", "b", "c"],
        titles=["A", "B", "C"],
        categories=["x", "y", "x"],
        brands=["p", "p", "q"],
        prices=[1.0, 2.5, 3.0],
        embeddings=[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]],
    )


def test_columns_codes_and_normalized_embeddings() -> None:
    c = small()
    assert len(c) == 3
    assert c.dim == 2
    assert c.category_names[c.category].tolist() == ["x", "y", "x"]
    assert c.brand_names[c.brand].tolist() == ["p", "p", "q"]
    np.testing.assert_allclose(np.linalg.norm(c.embedding, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(c.embedding[0], [0.6, 0.8], rtol=1e-6)
    assert c.rows(["c", "zz", "a"]).tolist() == [2, -1, 0]


def test_parquet_round_trip(tmp_path: Path) -> None:
    c = small()
    save_catalog(c, tmp_path / "c.parquet")
    back = load_catalog(tmp_path / "c.parquet")
    assert back.ids.tolist() == c.ids.tolist()
    assert back.titles.tolist() == c.titles.tolist()
    np.testing.assert_allclose(back.embedding, c.embedding)
    np.testing.assert_allclose(back.price, c.price)


def test_save_and_load_cycles_change_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    first = Catalog(
        ids=[str(i) for i in range(50)],
        titles=["t"] * 50,
        categories=["c"] * 50,
        brands=["b"] * 50,
        prices=np.ones(50),
        embeddings=rng.normal(size=(50, 8)),
    )
    save_catalog(first, tmp_path / "a.parquet")
    second = load_catalog(tmp_path / "a.parquet")
    save_catalog(second, tmp_path / "b.parquet")
    third = load_catalog(tmp_path / "b.parquet")
    assert np.array_equal(first.embedding, second.embedding)
    assert np.array_equal(second.embedding, third.embedding)


def test_csv_with_space_separated_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "item_id,title,category,brand,price,embedding\n1,One,x,p,9.5,1 0\n2,Two,y,q,3,0 1\n"
    )
    c = load_catalog(path)
    assert c.ids.tolist() == ["1", "2"]
    assert c.price.tolist() == [9.5, 3.0]
    assert c.embedding.tolist() == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("item_id,title,category,brand,price\n1,a,b,c,1\n", "missing column"),
        ("item_id,title,category,brand,price,embedding\n1,a,b,c,1,1 0\n2,a,b,c,1,1\n", "lengths"),
        ("item_id,title,category,brand,price,embedding\n1,a,b,c,1,1 x\n", "numbers"),
        (
            "item_id,title,category,brand,price,embedding\n1,a,b,c,1,1 0\n1,a,b,c,1,1 0\n",
            "duplicate item_id '1'",
        ),
        ("item_id,title,category,brand,price,embedding\n1,a,b,c,cheap,1 0\n", "price"),
    ],
)
def test_bad_catalog_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_missing_or_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.parquet")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(CatalogError, match=r"expected \.parquet or \.csv"):
        load_catalog(tmp_path / "c.json")
