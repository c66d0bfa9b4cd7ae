"""The Python client of the tastemaker HTTP API, blocking and asyncio.

    from tastemaker.client import Client, AsyncClient

    with Client("http://127.0.0.1:8000", api_key="...") as tm:
        tm.send_events([Event(...)])
        rec = tm.recommend("ann", n=10, filters=Filters(in_stock=True))

    async with AsyncClient("http://127.0.0.1:8000") as tm:
        rec = await tm.recommend("ann")

One implementation: every endpoint is described once, as a `Call` (method, path, body,
answer type), by the methods of `_E`; what to do with an answer (decode it, raise a typed
error, or wait and retry on 429/503) is decided once, by `_outcome`. The two clients only
move bytes (`httpx2.Client`, `httpx2.AsyncClient`) and carry one typed line per endpoint.
Retries: answers 429 and 503 are retried after their Retry-After (at most `retries` times);
`send_events` is safe to retry because event ids make the ingest idempotent. `api_key` goes
out as `X-API-Key` on every call; a 401 or 403 (no key, or one without the endpoint's scope)
is an `ApiError`, never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import httpx2
import msgspec

from tastemaker.events import Event
from tastemaker.ranking.rerank import Filters
from tastemaker.serving.schemas import (
    Accepted,
    ErrorBody,
    Health,
    RecommendResponse,
    SimilarResponse,
    UserFeatures,
)

__all__ = ["ApiError", "AsyncClient", "Call", "Client", "Filters"]

T = TypeVar("T")
_RETRYABLE = {429, 503}


class ApiError(RuntimeError):
    """The server refused the call; `status`, `error` and `detail` say why, `problems` names
    each bad event of a refused batch."""

    def __init__(self, status: int, body: ErrorBody | None, text: str) -> None:
        self.status = status
        self.error = body.error if body else "http_error"
        self.detail = body.detail if body else text[:500]
        self.problems = list(body.problems) if body else []
        super().__init__(f"HTTP {status} {self.error}: {self.detail}")


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    answer: type[T]
    body: Any = None
    params: dict[str, str] | None = None


@dataclass(frozen=True)
class _Retry:
    after_s: float


_errors = msgspec.json.Decoder(ErrorBody)
_encode = msgspec.json.Encoder().encode


def _outcome(call: Call[T], status: int, headers: httpx2.Headers, content: bytes) -> T | _Retry:
    """The decoded answer, a retry, or an `ApiError`: the one place answers are judged."""
    if 200 <= status < 300:
        return msgspec.json.decode(content, type=call.answer)
    if status in _RETRYABLE:
        try:
            return _Retry(float(headers.get("retry-after", "1")))
        except ValueError:
            return _Retry(1.0)
    raise _error(status, content)


def _final(call: Call[T], status: int, headers: httpx2.Headers, content: bytes) -> T:
    """After the last retry a 429/503 is an error like any other."""
    result = _outcome(call, status, headers, content)
    if isinstance(result, _Retry):
        raise _error(status, content)
    return result


def _error(status: int, content: bytes) -> ApiError:
    try:
        body: ErrorBody | None = _errors.decode(content)
    except msgspec.DecodeError:
        body = None
    return ApiError(status, body, content.decode(errors="replace"))


class RecommendOptions(TypedDict, total=False):
    filters: Filters | None
    explain: bool
    deadline_ms: float | None


class RankOptions(TypedDict, total=False):
    n: int | None
    filters: Filters | None
    explain: bool


class _E:
    """Each endpoint, described once: its method, path, body and answer type."""

    @staticmethod
    def send_events(events: Sequence[Event]) -> Call[Accepted]:
        return Call("POST", "/v1/events", Accepted, {"events": list(events)})

    @staticmethod
    def recommend(
        user_id: str,
        n: int = 10,
        *,
        filters: Filters | None = None,
        explain: bool = False,
        deadline_ms: float | None = None,
    ) -> Call[RecommendResponse]:
        body: dict[str, Any] = {"user_id": user_id, "n": n, "explain": explain}
        if filters is not None:
            body["filters"] = filters
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        return Call("POST", "/v1/recommend", RecommendResponse, body)

    @staticmethod
    def rank(
        user_id: str,
        item_ids: Sequence[str],
        *,
        n: int | None = None,
        filters: Filters | None = None,
        explain: bool = False,
    ) -> Call[RecommendResponse]:
        body: dict[str, Any] = {"user_id": user_id, "item_ids": list(item_ids), "explain": explain}
        if n is not None:
            body["n"] = n
        if filters is not None:
            body["filters"] = filters
        return Call("POST", "/v1/rank", RecommendResponse, body)

    @staticmethod
    def similar(item_id: str, n: int = 10) -> Call[SimilarResponse]:
        path = f"/v1/items/{httpx2.URL(item_id).raw_path.decode()}/similar"
        return Call("GET", path, SimilarResponse, params={"n": str(n)})

    @staticmethod
    def features(user_id: str) -> Call[UserFeatures]:
        return Call(
            "GET", f"/v1/users/{httpx2.URL(user_id).raw_path.decode()}/features", UserFeatures
        )

    @staticmethod
    def health() -> Call[Health]:
        return Call("GET", "/healthz", Health)


def _headers(api_key: str | None) -> dict[str, str]:
    h = {"content-type": "application/json"}
    if api_key:
        h["x-api-key"] = api_key
    return h


class Client:
    """Blocking client."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.retries = retries
        self._http = httpx2.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout_s)

    def call(self, call: Call[T]) -> T:
        content = None if call.body is None else _encode(call.body)
        for _ in range(self.retries):
            r = self._http.request(call.method, call.path, content=content, params=call.params)
            result = _outcome(call, r.status_code, r.headers, r.content)
            if not isinstance(result, _Retry):
                return result
            time.sleep(result.after_s)
        r = self._http.request(call.method, call.path, content=content, params=call.params)
        return _final(call, r.status_code, r.headers, r.content)

    # The typed surface: each line hands the endpoint's `Call` to `call`.
    def send_events(self, events: Sequence[Event]) -> Accepted:
        return self.call(_E.send_events(events))

    def recommend(
        self, user_id: str, n: int = 10, **options: Unpack[RecommendOptions]
    ) -> RecommendResponse:
        return self.call(_E.recommend(user_id, n, **options))

    def rank(
        self, user_id: str, item_ids: Sequence[str], **options: Unpack[RankOptions]
    ) -> RecommendResponse:
        return self.call(_E.rank(user_id, item_ids, **options))

    def similar(self, item_id: str, n: int = 10) -> SimilarResponse:
        return self.call(_E.similar(item_id, n))

    def features(self, user_id: str) -> UserFeatures:
        return self.call(_E.features(user_id))

    def health(self) -> Health:
        return self.call(_E.health())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client: the same methods, awaited."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
    ) -> None:
        self.retries = retries
        self._http = httpx2.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout_s
        )

    async def call(self, call: Call[T]) -> T:
        content = None if call.body is None else _encode(call.body)
        for _ in range(self.retries):
            r = await self._http.request(
                call.method, call.path, content=content, params=call.params
            )
            result = _outcome(call, r.status_code, r.headers, r.content)
            if not isinstance(result, _Retry):
                return result
            await asyncio.sleep(result.after_s)
        r = await self._http.request(call.method, call.path, content=content, params=call.params)
        return _final(call, r.status_code, r.headers, r.content)

    # The typed surface: each line hands the endpoint's `Call` to `call`.
    async def send_events(self, events: Sequence[Event]) -> Accepted:
        return await self.call(_E.send_events(events))

    async def recommend(
        self, user_id: str, n: int = 10, **options: Unpack[RecommendOptions]
    ) -> RecommendResponse:
        return await self.call(_E.recommend(user_id, n, **options))

    async def rank(
        self, user_id: str, item_ids: Sequence[str], **options: Unpack[RankOptions]
    ) -> RecommendResponse:
        return await self.call(_E.rank(user_id, item_ids, **options))

    async def similar(self, item_id: str, n: int = 10) -> SimilarResponse:
        return await self.call(_E.similar(item_id, n))

    async def features(self, user_id: str) -> UserFeatures:
        return await self.call(_E.features(user_id))

    async def health(self) -> Health:
        return await self.call(_E.health())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
