"""The privacy routes: `DELETE /v1/users/{user_id}` (erasure) and
`POST /v1/users/{user_id}/consent`. Both need the `admin` scope."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker.deployment.privacy import erase_users, set_consent
from tastemaker.deployment.runtime import Runtime
from tastemaker.log import LogError
from tastemaker.offline.lake import LakeError
from tastemaker.privacy.erasure import ErasureReport
from tastemaker.serving.schemas import ErrorBody
from tastemaker.store import StoreError

__all__ = ["ConsentRequest", "ConsentResponse", "Erased", "openapi_paths", "privacy_routes"]

_encode = msgspec.json.Encoder().encode


class ConsentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`personalization: false` drops the user's later events at ingest, erases what is
    stored of the user and serves generic (popular) answers; `true` restores it for new
    events."""

    personalization: bool


class Erased(msgspec.Struct, frozen=True):
    """What an erasure removed, by place."""

    user_id: str
    log_records: int
    store_rows: int
    seen_keys: int
    lake_events: int
    feature_log_rows: int
    artifact_rows: dict[str, int]


class ConsentResponse(msgspec.Struct, frozen=True):
    user_id: str
    personalization: bool
    erased: Erased | None = None


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, detail: str) -> Response:
    return _json(ErrorBody(error, detail), status)


def _erased(user_id: str, report: ErasureReport) -> Erased:
    fields = dataclasses.asdict(report)
    del fields["users"]
    return Erased(user_id=user_id, **fields)


def _user(request: Request) -> str | Response:
    user_id = str(request.path_params["user_id"])
    if not 1 <= len(user_id) <= 256:
        return _error(400, "invalid_request", "user_id must be 1..256 characters")
    return user_id


_UNAVAILABLE = (LogError, StoreError, LakeError, OSError)


def privacy_routes(runtime: Runtime) -> list[Route]:
    async def delete_user(request: Request) -> Response:
        user = _user(request)
        if isinstance(user, Response):
            return user
        try:
            report = await run_in_threadpool(erase_users, runtime, [user])
        except _UNAVAILABLE as exc:
            return _error(503, "erasure_incomplete", f"{exc}; run the erasure again")
        return _json(_erased(user, report))

    async def post_consent(request: Request) -> Response:
        user = _user(request)
        if isinstance(user, Response):
            return user
        try:
            body = msgspec.json.decode(await request.body(), type=ConsentRequest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _error(400, "invalid_request", str(exc))
        try:
            report = await run_in_threadpool(set_consent, runtime, user, body.personalization)
        except _UNAVAILABLE as exc:
            return _error(503, "consent_incomplete", f"{exc}; send it again")
        erased = None if report is None else _erased(user, report)
        return _json(ConsentResponse(user, body.personalization, erased))

    return [
        Route("/v1/users/{user_id:str}", delete_user, methods=["DELETE"]),
        Route("/v1/users/{user_id:str}/consent", post_consent, methods=["POST"]),
    ]


def openapi_paths(ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The routes' OpenAPI paths and the components they refer to (`ref`: the template)."""
    refs, components = msgspec.json.schema_components(
        (ConsentRequest, ConsentResponse, Erased, ErrorBody), ref_template=ref
    )
    consent, consent_response, erased, error = refs
    user = {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def body(schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    failed = body(error, "A backend failed part way; the call is idempotent: send it again.")
    paths = {
        "/v1/users/{user_id}": {
            "delete": {
                "summary": "Erase a user from the store, the log, the lake and the artifacts "
                "(admin scope)",
                "parameters": [user],
                "responses": {
                    "200": body(erased, "What was removed, by place"),
                    "400": body(error, "Invalid user id"),
                    "503": failed,
                },
            }
        },
        "/v1/users/{user_id}/consent": {
            "post": {
                "summary": "Set a user's consent to personalization (admin scope)",
                "parameters": [user],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": consent}},
                },
                "responses": {
                    "200": body(consent_response, "Recorded"),
                    "400": body(error, "Invalid request"),
                    "503": failed,
                },
            }
        },
    }
    return paths, components
