"""How long each console page takes to render in a real browser (Chromium driven by
Playwright): from navigation start to the first data drawn (`html[data-rendered]`, set by
console.js), over `tastemaker serve` with the demo shop (`tastemaker demo --quick`'s size:
2,000 users, 2,000 items, every event posted, the batch jobs run). Each page is opened
`--repeat` times in a fresh tab; the first opening is reported apart (cold: nothing cached).
With `--screenshots DIR` it also writes a PNG of each page there (docs/console/ holds them),
the live pages taken after a few seconds of traffic. Prints one JSON object last.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_console [--repeat N]
        [--screenshots docs/console]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec
from playwright.sync_api import Browser, sync_playwright

from tastemaker.data.synthetic import Shop
from tastemaker.testing.console import PAGES, chromium_path, missing, post_json, served_shop


def _render_ms(browser: Browser, url: str, screenshot: Path | None = None) -> int:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_selector("html[data-rendered]", timeout=15_000)
        if screenshot is not None:
            page.wait_for_timeout(500 if "every" not in url else 6_000)
            page.screenshot(path=str(screenshot), full_page=True)
        return int(page.evaluate("document.documentElement.dataset.rendered"))
    finally:
        page.close()


def _traffic(url: str, shop: Shop, stop: threading.Event) -> None:
    """Events and recommend calls, for the overview's live charts."""
    ids = [str(i) for i in shop.catalog().ids[:200]]
    n = 0
    while not stop.wait(0.05):
        user = str(shop.user_ids[n % len(shop.user_ids)])
        event = {
            "event_id": f"b{n}",
            "user_id": user,
            "item_id": ids[n % len(ids)],
            "type": "view",
            "ts": time.time(),
        }
        post_json(url + "/v1/events", {"events": [event]})
        post_json(url + "/v1/recommend", {"user_id": user, "n": 10})
        n += 1


def _screenshots(
    browser: Browser, url: str, user: str, item: str, *, shop: Shop, directory: Path
) -> None:
    """A PNG of each page; the live ones after a few refreshes under traffic."""
    directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(url, shop, stop), daemon=True)
    traffic.start()
    try:
        for name, path in PAGES.items():
            live = "&every=0.5" if name in ("overview", "items") else ""
            page_url = url + path.format(user=user, item=item) + live
            if name == "overview":
                page_url = url + path + "?every=0.5"
            _render_ms(browser, page_url, directory / f"{name}.png")
    finally:
        stop.set()
        traffic.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--screenshots", type=Path, default=None)
    args = parser.parse_args()
    if (lacking := missing()) is not None:
        raise SystemExit(f"bench_console needs {lacking}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        served_shop(Path(tmp), 2_000, 2_000, batch_jobs=True) as (url, shop),
    ):
        user = str(shop.user_ids[1])
        # An item the user is recommended: popular enough to have neighbours of every source.
        item = post_json(url + "/v1/recommend", {"user_id": user, "n": 1})["items"][0]["item_id"]
        results = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            for name, path in PAGES.items():
                page_url = url + path.format(user=user, item=item)
                times = [_render_ms(browser, page_url) for _ in range(args.repeat + 1)]
                results[name] = {
                    "cold_ms": times[0],
                    "median_ms": statistics.median(times[1:]),
                    "max_ms": max(times[1:]),
                }
            if args.screenshots is not None:
                _screenshots(browser, url, user, item, shop=shop, directory=args.screenshots)
            browser.close()
    print(msgspec.json.encode({"pages": results, "repeat": args.repeat}).decode())


if __name__ == "__main__":
    main()
