"""`POST /v1/events` and `POST /v1/items`: what comes into a deployment over HTTP."""

from __future__ import annotations

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker.deployment.ingest import BackpressureError
from tastemaker.deployment.runtime import ItemsError, Runtime
from tastemaker.events import InvalidBatchError
from tastemaker.log import LogError
from tastemaker.serving.admission import Admission
from tastemaker.serving.responses import ServingLimits, decode, error, json, timed
from tastemaker.serving.schemas import Accepted, ItemsAccepted, ItemsBatch

__all__ = ["IngestHandlers"]

_items_decoder = msgspec.json.Decoder(ItemsBatch)


class IngestHandlers:
    def __init__(self, runtime: Runtime, admission: Admission, limits: ServingLimits) -> None:
        self.runtime = runtime
        self.admission = admission
        self.limits = limits

    def routes(self) -> list[Route]:
        return [
            Route("/v1/events", timed("events", self.post_events), methods=["POST"]),
            Route("/v1/items", timed("items", self.post_items), methods=["POST"]),
        ]

    async def post_events(self, request: Request) -> Response:
        body = await request.body()
        try:
            # The append fsyncs: run it off the event loop so other requests keep flowing.
            accepted = await run_in_threadpool(self.runtime.ingestor.ingest_json, body)
        except InvalidBatchError as exc:
            return error(
                400,
                "invalid_batch",
                f"{_refused(exc)}; nothing was written",
                exc.problems,
            )
        except LogError as exc:
            if exc.maybe_written:  # its message says the events may have been written
                return error(
                    503,
                    "log_unavailable",
                    f"{exc}: resend the same events with the same event ids (the stream drops "
                    "repeated ids)",
                )
            return error(503, "log_unavailable", f"{exc}; nothing was written, retry later")
        except BackpressureError as exc:
            response = error(429, "backpressure", f"{exc}; nothing was written")
            response.headers["Retry-After"] = str(exc.retry_after_s)
            return response
        return json(Accepted(accepted), 202)

    async def post_items(self, request: Request) -> Response:
        if (refused := await self.admission.refused(request)) is not None:
            return refused
        batch = decode(_items_decoder, await request.body(), self.limits, "invalid_items")
        if isinstance(batch, Response):
            return batch
        try:
            version = await run_in_threadpool(self.runtime.upsert_items, batch.items)
        except ItemsError as exc:
            return error(
                400,
                "invalid_items",
                f"{len(exc.problems)} problem(s); nothing was written",
                exc.problems,
            )
        return json(ItemsAccepted(len(batch.items), version), 202)


def _refused(exc: InvalidBatchError) -> str:
    """What a refused batch's detail says: how many events were invalid (an event with two
    bad fields counts once), or that the body as a whole was."""
    events = {p.index for p in exc.problems if p.index >= 0}
    if not events:
        return "the batch is invalid"
    return f"{len(events)} invalid event(s), {len(exc.problems)} problem(s)"
