"""The adaptive microbatch limit (`BatchSizer`), on a clock the tests set."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tastemaker.catalog import Catalog
from tastemaker.deployment.runtime import Runtime
from tastemaker.metrics import METRICS
from tastemaker.stream.batching import BatchSizer
from tests.conftest import T0, event, make_config


def _full_batch(sizer: BatchSizer, at: float) -> int:
    """Poll at `at` and get as many records as the limit allows (a backlog)."""
    limit = sizer.limit(at)
    sizer.polled(at, limit, limit)
    return limit


def test_the_first_limit_is_50000_or_the_cap() -> None:
    assert BatchSizer(250_000, 2.0).limit(0.0) == 50_000
    assert BatchSizer(700, 2.0).limit(0.0) == 700


def test_a_target_of_zero_always_takes_the_cap() -> None:
    sizer = BatchSizer(5_000, 0.0)
    for t in (0.0, 10.0, 10.001, 50.0):
        assert _full_batch(sizer, t) == 5_000


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (1.25, 80_000),  # 40,000 a second for 2 s
        (1.6, 62_500),
        (4.0, 25_000),  # slower than the target: smaller
        (0.01, 100_000),  # at most doubled a batch
        (1000.0, 1_000),  # never under the floor
    ],
)
def test_a_full_batch_sizes_the_next_to_the_target(elapsed: float, expected: int) -> None:
    sizer = BatchSizer(250_000, 2.0)
    assert _full_batch(sizer, 5.0) == 50_000
    assert sizer.limit(5.0 + elapsed) == expected


def test_the_limit_grows_to_the_cap_and_no_further() -> None:
    sizer = BatchSizer(150_000, 2.0)
    t = 0.0
    limits = []
    for _ in range(4):
        limits.append(_full_batch(sizer, t))
        t += 0.1  # 0.1 s whatever the size: the rate allows more each time
    assert limits == [50_000, 100_000, 150_000, 150_000]


def test_a_batch_that_did_not_fill_its_limit_leaves_the_limit_alone() -> None:
    """The log ran dry: the wait after it says nothing about the processing rate."""
    sizer = BatchSizer(250_000, 2.0)
    _full_batch(sizer, 0.0)
    assert sizer.limit(1.0) == 100_000
    sizer.polled(1.0, 1_234, 100_000)  # fewer than the limit
    assert sizer.limit(30.0) == 100_000  # not shrunk by the 29 s idle
    sizer.polled(30.0, 0, 100_000)
    assert sizer.limit(31.0) == 100_000


def test_only_the_poll_right_after_a_full_batch_is_timed_against_it() -> None:
    sizer = BatchSizer(250_000, 2.0)
    _full_batch(sizer, 0.0)
    assert sizer.limit(4.0) == 25_000  # 12,500 a second: 25,000 fit in 2 s
    assert sizer.limit(99.0) == 25_000  # no new full batch in between: unchanged


@pytest.mark.parametrize(
    ("target_s", "limit", "first"), [(2.0, 50_000, 50_000), (0.0, 100_000, 60_000)]
)
def test_the_processor_polls_with_the_sizers_limit(
    tmp_path: Path, catalog: Catalog, target_s: float, limit: int, first: int
) -> None:
    """Under a backlog of 60,000 records and a cap of 100,000, the first batch takes 50,000
    (nothing timed yet), or all of them with the target off; /metrics shows the limit."""
    config = make_config(tmp_path, catalog)
    stream = msgspec.structs.replace(config.stream, batch_size=100_000, batch_target_s=target_s)
    rt = Runtime(msgspec.structs.replace(config, stream=stream), catalog)
    try:
        items = [str(i) for i in catalog.ids[:50]]
        rt.ingestor.ingest(
            [event(f"e{k}", f"u{k % 97}", items[k % 50], ts=T0 + k) for k in range(60_000)]
        )
        result = rt.processor.process_once()
        assert result is not None
        assert result.last_offset == first
        assert METRICS.registry.get_sample_value("tastemaker_stream_batch_limit") == limit
        assert rt.processor.drain() == 60_000 - first
    finally:
        rt.close()
