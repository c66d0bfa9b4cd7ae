"""The catalog change feed: item upserts and deletes, in order, shared by every process.

`POST /v1/items` appends validated changes; each API worker and the stream process poll the
feed (`catalog.poll_interval_s`) and apply what is new to their catalog in RAM, so a change is
everywhere within a few seconds. On start a process loads the base catalog file and applies
the whole feed. Backends, by `catalog.feed_url`, through `open_feed`.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from tastemaker.catalog.catalog import CatalogError
from tastemaker.catalog.feed.base import CatalogFeed
from tastemaker.catalog.feed.sqlite import SqliteCatalogFeed
from tastemaker.urls import parse_url

__all__ = ["CatalogFeed", "SqliteCatalogFeed", "open_feed"]

_REDIS_OPTIONS = frozenset({"prefix", "timeout_ms"})


def open_feed(url: str) -> CatalogFeed:
    """Open the feed a URL names (`catalog.feed_url`):

    - `embedded://PATH`: one SQLite file in WAL mode under the directory PATH (many processes
      of one machine);
    - `redis://HOST:PORT/DB?prefix=&timeout_ms=5000` or `redis+cluster://HOST:PORT?...`: one
      Redis stream, for processes on many machines; `prefix` is prepended to its key,
      `timeout_ms` bounds each command.

    An option the scheme does not take is refused (`CatalogError`). The registry is this
    function: one explicit branch per backend.
    """
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "redis+cluster"):
        base, _, query = url.partition("?")
        options = dict(parse_qsl(query))
        unknown = sorted(set(options) - _REDIS_OPTIONS)
        if unknown:
            raise CatalogError(
                f"catalog.feed_url {url!r}: unknown option(s) {', '.join(unknown)}; "
                f"{scheme}:// takes {', '.join(sorted(_REDIS_OPTIONS))}"
            )
        try:
            timeout_s = float(options.get("timeout_ms", "5000")) / 1000
        except ValueError as exc:
            raise CatalogError(f"catalog.feed_url {url!r}: timeout_ms: {exc}") from exc
        from tastemaker.catalog.feed.redis import RedisCatalogFeed  # imports redis-py

        return RedisCatalogFeed.from_url(
            base, prefix=options.get("prefix", ""), timeout_s=timeout_s
        )
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise CatalogError(f"catalog.feed_url: {exc}") from exc
    if parsed.scheme != "embedded":
        raise CatalogError(
            f"catalog.feed_url {url!r}: expected embedded://PATH, redis://HOST:PORT/DB or "
            "redis+cluster://HOST:PORT"
        )
    if parsed.params:
        raise CatalogError(
            f"catalog.feed_url {url!r}: unknown option(s) {', '.join(sorted(parsed.params))}; "
            "embedded:// takes none"
        )
    return SqliteCatalogFeed(parsed.path)
