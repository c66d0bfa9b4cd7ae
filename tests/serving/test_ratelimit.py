"""The rate limiter backends (serving/ratelimit/): one conformance suite over each, opened by
URL through `open_rate_limiter`, the Redis one against a real server."""

from __future__ import annotations

import uuid

import pytest

from tastemaker.serving.ratelimit import MemoryRateLimiter, RateLimiter, open_rate_limiter

BACKENDS = ["memory", "redis"]


def _url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "memory":
        return "memory://"
    redis_url: str = request.getfixturevalue("redis_url")
    return f"{redis_url}?prefix=rl-{uuid.uuid4().hex[:8]}:&timeout_ms=500"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_key_gets_its_burst_then_waits_and_keys_are_apart(
    backend: str, request: pytest.FixtureRequest
) -> None:
    limiter: RateLimiter = open_rate_limiter(_url(backend, request), 0.5, 2, {"vip": 1000.0})
    try:
        assert limiter.enabled()
        assert limiter.blocking == (backend == "redis")
        assert [limiter.acquire("k") for _ in range(2)] == [0.0, 0.0]
        assert 1.0 <= limiter.acquire("k") <= 2.1  # one token every 2 s
        assert limiter.acquire("vip") == 0.0
        assert limiter.acquire("other") == 0.0
    finally:
        limiter.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rate_means_disabled(backend: str, request: pytest.FixtureRequest) -> None:
    limiter = open_rate_limiter(_url(backend, request), 0.0, 1)
    try:
        assert not limiter.enabled()
        assert limiter.acquire("k") == 0.0
    finally:
        limiter.close()


def test_no_url_is_the_in_process_limiter() -> None:
    assert isinstance(open_rate_limiter(None, 1.0, 1), MemoryRateLimiter)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:1/0?bogus=1", "unknown option(s) bogus; redis:// takes prefix"),
        ("redis://127.0.0.1:1/0?timeout_ms=soon", "timeout_ms"),
        ("memory://?rate=3", "memory:// takes no path or options"),
        ("memcached://127.0.0.1:1", "unsupported rate limiter URL"),
    ],
)
def test_bad_urls_are_refused_by_name(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_rate_limiter(url, 1.0, 1)
