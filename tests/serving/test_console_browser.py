"""The console in a real browser: Playwright driving Chromium against `tastemaker serve`.

Skipped, naming what is missing, where Playwright or a Chromium is not installed
(`./scripts/test` installs Playwright with the dev extra; `.ci/run` installs Debian's
`chromium` and sets `TASTEMAKER_REQUIRE_BROWSER=1`, under which a missing one fails)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tastemaker.data.synthetic import Shop
from tastemaker.testing.console import PAGES, chromium_path, missing, post_json, served_shop
from tests.conftest import wait_until

if (_missing := missing()) is not None:
    if os.environ.get("TASTEMAKER_REQUIRE_BROWSER"):
        pytest.fail(f"console browser tests need {_missing}", pytrace=False)
    pytest.skip(f"console browser tests need {_missing}", allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Shop]]:
    with served_shop(tmp_path_factory.mktemp("console")) as (url, shop):
        wait_until(lambda: _get(url + "/healthz")["stream_lag"] == 0, timeout=60)
        yield url, shop


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return msgspec.json.decode(response.read())


def _open(browser: Browser, url: str) -> tuple[Page, list[str]]:
    """A page at `url` once its first data is drawn; the console errors it logged."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("html[data-rendered]", timeout=15_000)
    return page, errors


def test_every_page_loads_without_console_errors(
    served: tuple[str, Shop], browser: Browser
) -> None:
    url, shop = served
    user, item = str(shop.user_ids[0]), str(shop.catalog().ids[0])
    rendered = {}
    for name, path in PAGES.items():
        page, errors = _open(browser, url + path.format(user=user, item=item))
        assert errors == [], f"{name}: {errors}"
        assert page.locator("#status.bad").count() == 0, page.inner_text("#status")
        rendered[name] = int(page.evaluate("document.documentElement.dataset.rendered"))
        page.close()
    # Render times (navigation start to first data drawn) on the test shop; the benchmark
    # benchmarks/console_render.py measures them warm and repeatedly.
    print("console render ms:", rendered)


def test_user_inspector_shows_features_and_recommendations_after_events(
    served: tuple[str, Shop], browser: Browser
) -> None:
    url, shop = served
    items = [str(i) for i in shop.catalog().ids[:3]]
    now = time.time()
    events = [
        {
            "event_id": f"console-{i}",
            "user_id": "console-user",
            "item_id": item,
            "type": "view",
            "ts": now + i,
        }
        for i, item in enumerate(items)
    ]
    post_json(url + "/v1/events", {"events": events})
    wait_until(lambda: _get(url + "/v1/users/console-user/features")["features"], timeout=30)
    page, errors = _open(browser, url + "/console/users?user_id=console-user&n=5&explain=true")
    features = page.inner_text("#features")
    assert "profile" in features
    assert "session" in features
    assert items[-1] in features  # the last item viewed is in the stored session
    rows = page.locator("#recs tr")
    assert rows.count() == 6  # the header and 5 items
    recs = page.inner_text("#recs")
    assert "sources" in recs
    assert page.locator("#recs td:nth-child(5)").first.inner_text() != "\u2013"  # a because
    assert errors == []


def test_user_inspector_names_bad_options(served: tuple[str, Shop], browser: Browser) -> None:
    url, _ = served
    page, _ = _open(browser, url + "/console/users?user_id=u&filters=%7Bnope")
    assert "filters: JSON is malformed" in page.inner_text("#user-result")


def test_overview_chart_updates_live(served: tuple[str, Shop], browser: Browser) -> None:
    url, shop = served
    page, errors = _open(browser, url + "/console?every=0.3")
    chart = "document.querySelector('#chart-ingest').dataset"
    start = int(page.evaluate(f"Number({chart}.points)"))
    events = [
        {
            "event_id": f"live-{i}",
            "user_id": str(shop.user_ids[i % 10]),
            "item_id": str(shop.catalog().ids[i % 50]),
            "type": "view",
            "ts": time.time(),
        }
        for i in range(200)
    ]
    post_json(url + "/v1/events", {"events": events})
    # A point whose accepted rate counts the batch, then the chart goes on moving.
    page.wait_for_function(f"JSON.parse({chart}.last || '{{}}').accepted > 0", timeout=15_000)
    moved = int(page.evaluate(f"Number({chart}.points)"))
    assert moved > start
    page.wait_for_function(f"Number({chart}.points) >= {moved + 2}", timeout=15_000)
    assert errors == []
