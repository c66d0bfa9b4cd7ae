"""`tastemaker demo`: a synthetic shop through the real ingest, stream and recommend path."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tastemaker.catalog import save_catalog
from tastemaker.config import Config, dump_config, local_config
from tastemaker.data.synthetic import Shop, ShopSpec, generate_shop
from tastemaker.deployment.ingest import BackpressureError
from tastemaker.deployment.runtime import Runtime

__all__ = ["run_demo"]

_BATCH = 5000  # events per ingest call, like a client sending batches


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _write_config(data_dir: Path) -> Config:
    config = local_config(data_dir)
    dump_config(config, data_dir / "config.toml")
    return config


def taste_match(shop: Shop, runtime: Runtime, users: list[int], n: int) -> float:
    """Share of the users' top-`n` items that fall in their hidden top categories."""
    cat = runtime.catalog
    hits = [
        str(cat.category_names[cat.category[cat.index[item.item_id]]]) in shop.taste(u).categories
        for u in users
        for item in runtime.pipeline.recommend(str(shop.user_ids[u]), n).items
    ]
    return float(np.mean(hits)) if hits else 0.0


def _show(console: Console, shop: Shop, runtime: Runtime, users: list[int]) -> None:
    """Print recommendations beside hidden tastes."""
    cat = runtime.catalog
    for u in users:
        user_id = str(shop.user_ids[u])
        taste = shop.taste(u)
        rec = runtime.pipeline.recommend(user_id, 5)
        title = (
            f"{user_id}: likes {taste.categories}, brands {taste.brands}, "
            f"price band {taste.price_band}"
        )
        table = Table(title=title, title_justify="left")
        for col in ("item", "category", "brand", "price", "score", "sources"):
            table.add_column(col)
        for item in rec.items:
            row = cat.index[item.item_id]
            table.add_row(
                item.item_id,
                str(cat.category_names[cat.category[row]]),
                str(cat.brand_names[cat.brand[row]]),
                f"{cat.price[row]:.2f}",
                f"{item.score:.3f}",
                ",".join(item.sources),
            )
        console.print(table)


def _show_quality(console: Console, shop: Shop, runtime: Runtime, spec: ShopSpec) -> None:
    """The cold-start answer, and how often users' top-10 fall in their hidden tastes beside
    the same share for popular items (a baseline in the same run)."""
    many = [int(u) for u in np.random.default_rng(1).choice(spec.n_users, 200, replace=False)]
    hit = taste_match(shop, runtime, many, 10)
    # Baseline in the same run: how often a top-10 of globally popular items would match.
    popular = runtime.pipeline.recommend("someone-new", 10).items
    base = float(
        np.mean(
            [
                str(
                    runtime.catalog.category_names[
                        runtime.catalog.category[runtime.catalog.index[i.item_id]]
                    ]
                )
                in shop.taste(u).categories
                for u in many
                for i in popular
            ]
        )
    )
    cold = runtime.pipeline.recommend("someone-new", 3)
    console.print(
        f"cold start (unknown user): {[i.item_id for i in cold.items]} from "
        f"{sorted({s for i in cold.items for s in i.sources})}"
    )
    console.print(
        f"taste match: {hit:.0%} of top-10 items for 200 random users are in their "
        f"hidden top categories (popular items for everyone: {base:.0%})."
    )


def run_demo(data_dir: Path, *, quick: bool, users: int | None, items: int | None) -> Config:
    """Generate, ingest, process, show. Returns the config to serve the result with."""
    console = Console()
    spec = ShopSpec(
        n_users=users or (2_000 if quick else 20_000), n_items=items or (2_000 if quick else 5_000)
    )
    started = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task("generating shop", total=spec.n_users)
        shop = generate_shop(spec)
        save_catalog(shop.catalog(), data_dir / "catalog.parquet")
        config = _write_config(data_dir)
        runtime = Runtime.from_config(config)
        ingest = progress.add_task("ingesting via POST path", total=None)
        encode = msgspec.json.Encoder().encode
        n_events = 0
        chunk = 2_000
        stream_s = 0.0
        for events in shop.events(chunk_users=chunk):
            for i in range(0, len(events), _BATCH):
                body = encode({"events": events[i : i + _BATCH]})
                while True:
                    try:
                        n_events += runtime.ingestor.ingest_json(body)
                        break
                    except (
                        BackpressureError
                    ):  # like a client told to retry: let the stream catch up
                        t0 = time.perf_counter()
                        runtime.processor.drain()
                        stream_s += time.perf_counter() - t0
                progress.update(ingest, completed=n_events)
            progress.advance(task, min(chunk, spec.n_users - int(progress.tasks[0].completed)))
        progress.update(ingest, total=n_events)
        process = progress.add_task("stream processing", total=runtime.ingestor.lag())
        t0 = time.perf_counter()
        while (result := runtime.processor.process_once()) is not None:
            progress.advance(process, result.events + result.duplicates)
        stream_s += time.perf_counter() - t0
    console.print(
        f"{spec.n_users} users, {spec.n_items} items, {n_events} events; "
        f"stream applied {n_events / stream_s:,.0f} events/s"
    )
    sample = [int(u) for u in np.random.default_rng(0).choice(spec.n_users, 3, replace=False)]
    _show(console, shop, runtime, sample)
    _show_quality(console, shop, runtime, spec)
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s")
    runtime.close()
    return config
