"""What every handler of the HTTP API shares: JSON answers and errors, body decoding that
names what is wrong, and the per-endpoint latency and status metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tastemaker import safejson
from tastemaker.events import id_problem
from tastemaker.metrics import METRICS
from tastemaker.serving.schemas import ErrorBody

__all__ = ["Handler", "ServingLimits", "decode", "error", "json", "timed"]

encode = msgspec.json.Encoder().encode
Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


class ServingLimits(msgspec.Struct, frozen=True):
    max_json_depth: int
    max_id_bytes: int


def json(body: Any, status: int = 200) -> Response:
    return Response(encode(body), status_code=status, media_type="application/json")


def error(status: int, error: str, detail: str, problems: list[Any] | None = None) -> Response:
    return json(ErrorBody(error, detail, problems or []), status)


def decode(
    decoder: msgspec.json.Decoder[T], body: bytes, limits: ServingLimits, error_name: str
) -> T | Response:
    """The decoded body, or the 400 that names what is wrong with it (a `user_id` is a store
    key: its bytes are limited too)."""
    written = "; nothing was written" if error_name == "invalid_items" else ""
    try:
        decoded = safejson.decode(decoder, body, limits.max_json_depth)
    except msgspec.ValidationError as exc:
        return error(400, error_name, f"{exc}{written}")
    except (msgspec.DecodeError, safejson.UnsafeJSONError) as exc:
        return error(400, error_name, f"malformed JSON: {exc}{written}")
    user_id = getattr(decoded, "user_id", None)
    if user_id is not None and (why := id_problem(user_id, limits.max_id_bytes)) is not None:
        return error(400, error_name, f"user_id: {why}")
    return decoded


def timed(endpoint: str, handler: Handler) -> Handler:
    """`handler`, counted in `tastemaker_request_seconds` and `tastemaker_responses`."""
    histogram = METRICS.request_seconds.labels(endpoint)

    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        status = 500  # if the handler raises
        try:
            response = await handler(request)
            status = response.status_code
            return response
        finally:
            histogram.observe(time.perf_counter() - started)
            METRICS.responses.labels(endpoint, f"{status // 100}xx").inc()

    return wrapped
