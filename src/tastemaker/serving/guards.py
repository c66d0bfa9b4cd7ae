"""The request guard: what a request must be before any handler reads it.

- A body on POST, PUT or PATCH must be `Content-Type: application/json` (a `charset`
  parameter may say utf-8), else 415: a browser sends text/plain and form bodies across
  origins without asking, so any web page a user visits could otherwise post to the API.
- A body over `serving.max_body_bytes` answers 413: at once when Content-Length says so,
  else as soon as the bytes streamed in pass the limit, so no body is ever held whole.

Both answers are JSON (`ErrorBody`) like every other refusal.
"""

from __future__ import annotations

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tastemaker.serving.schemas import ErrorBody

__all__ = ["RequestGuard"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_encode = msgspec.json.Encoder().encode


class _TooLargeError(Exception):
    """Raised from `receive` into the handler that reads a body past the limit."""


def _json_content_type(value: str | None) -> bool:
    if value is None:
        return False
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in {
            "utf-8",
            "utf8",
        }:
            return False
    return True


async def _refuse(send: Send, status: int, error: str, detail: str) -> None:
    body = _encode(ErrorBody(error, detail))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware enforcing the content type and size of request bodies."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        content_type = headers.get(b"content-type")
        if not _json_content_type(None if content_type is None else content_type.decode("latin-1")):
            got = "none" if content_type is None else repr(content_type.decode("latin-1"))
            await _refuse(
                send,
                415,
                "unsupported_media_type",
                f"the body must be Content-Type: application/json (got {got})",
            )
            return
        limit = self.max_body_bytes
        too_large = (
            f"the body is over the limit of {limit} bytes (serving.max_body_bytes); "
            "nothing was read or written"
        )
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or len(length) > 18 or int(length) > limit):
            await _refuse(send, 413, "body_too_large", too_large)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLargeError
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLargeError:
            if started:
                raise
            await _refuse(send, 413, "body_too_large", too_large)
