"""The adaptive microbatch limit: how many records the next poll may take."""

from __future__ import annotations

__all__ = ["FIRST_BATCH", "MIN_BATCH", "BatchSizer"]

# Adaptive batch sizes (`BatchSizer`): the first limit, before any batch was timed, and the
# least one (a batch's fixed costs, the popular lists and the log and store round trips,
# are paid per batch).
FIRST_BATCH = 50_000
MIN_BATCH = 1_000


class BatchSizer:
    """How many records the next poll may take: under a backlog, about what the recent
    batches processed in `target_s` (the loop's time from one poll to the next, which holds
    the batch's reads, computation and store write), between `MIN_BATCH` and `cap`; with
    `target_s` 0, always `cap`. A fixed count is a different wait on every machine and
    feature set; a time keeps a saturated batch, and the freshness of the events that wait
    for it, near `target_s` everywhere. Larger batches cost less an event (a user's row and an
    item's neighbour map are read, merged and written once a batch, whatever the number of
    their events in it). Only a batch that filled its limit measures the rate: a shorter
    one means the log ran dry, and the time after it is spent waiting, not working."""

    __slots__ = ("_cap", "_last", "_limit", "_target_s")

    def __init__(self, cap: int, target_s: float) -> None:
        self._cap = cap
        self._target_s = target_s
        self._limit = cap if target_s == 0 else min(cap, FIRST_BATCH)
        self._last: tuple[float, int] | None = None  # a full batch's poll time and size

    def limit(self, now: float) -> int:
        """The limit for a poll at `now` (`time.perf_counter()`)."""
        last, self._last = self._last, None
        if last is not None and self._target_s and (elapsed := now - last[0]) > 0:
            fits = round(last[1] * self._target_s / elapsed)
            # At most doubled a batch, so one quick batch does not make the next a long one.
            self._limit = max(min(self._cap, MIN_BATCH), min(fits, 2 * last[1], self._cap))
        return self._limit

    def polled(self, now: float, records: int, limit: int) -> None:
        """A poll at `now` with `limit` returned `records`."""
        self._last = (now, records) if records >= limit else None
