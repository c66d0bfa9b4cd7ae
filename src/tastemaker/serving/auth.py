"""Access control: API keys with scopes, checked in front of every route.

A key is presented as `Authorization: Bearer KEY` or `X-API-Key: KEY`, or as the password
of `Authorization: Basic` (any user name): a browser asks for that itself when the console
(`/console`, admin scope) answers 401, and sends it with every console request after.

The config holds only each key's SHA-256 (`serving.api_keys`), so a leaked config file or
environment gives no key away; the presented key's hash is compared with every configured
hash by `hmac.compare_digest`, all of them whatever matches, so the time taken says nothing about
which hash, or how much of one, matched.

Which scope a request needs is decided here from its method and path alone (`required_scope`),
before any route or body is read: a refused request costs one hash. Paths not listed need
`admin`, so an endpoint added later is closed until it is listed. The same table documents
the scopes in the OpenAPI document (`document_security`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import msgspec
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from tastemaker.config import ApiKey, ConfigError, ServingConfig
from tastemaker.config import Scope as KeyScope
from tastemaker.serving.schemas import ErrorBody

__all__ = [
    "SCOPES",
    "AuthMiddleware",
    "KeyStore",
    "Principal",
    "check_exposure",
    "client_name",
    "document_security",
    "hash_key",
    "install_auth",
    "is_loopback",
    "new_key",
    "required_scope",
]

log = logging.getLogger(__name__)

SCOPES: tuple[KeyScope, ...] = get_args(KeyScope)
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/openapi.json"})
# (method, path pattern, scope); `{name}` in an OpenAPI path template matches `[^/]+` too.
_RULES: tuple[tuple[str, re.Pattern[str], KeyScope], ...] = (
    ("POST", re.compile(r"/v1/events"), "ingest"),
    ("POST", re.compile(r"/v1/recommend"), "read"),
    ("POST", re.compile(r"/v1/rank"), "read"),
    ("GET", re.compile(r"/v1/items/[^/]+/similar"), "read"),
    # Listed although unlisted paths need `admin` anyway: the console shows users' features.
    ("GET", re.compile(r"/console(/.*)?"), "admin"),
)
_STATE_KEY = "tastemaker.api_key"  # the ASGI scope entry naming the authenticated key


def required_scope(method: str, path: str, *, metrics_open: bool = True) -> KeyScope | None:
    """The scope a request needs, or None for an open endpoint."""
    path = path.rstrip("/") or "/"
    if path in OPEN_PATHS:
        return None
    if path == "/metrics":
        return None if metrics_open else "metrics"
    method = "GET" if method == "HEAD" else method
    for rule_method, pattern, scope in _RULES:
        if method == rule_method and pattern.fullmatch(path):
            return scope
    return "admin"


def hash_key(key: str) -> str:
    """The SHA-256 hex digest that `serving.api_keys` holds for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe."""
    return "tm_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """An authenticated key: its name and what it may do."""

    name: str
    scopes: frozenset[KeyScope]

    def allows(self, scope: KeyScope) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class KeyStore:
    """The configured keys' hashes; `find` is the only way in."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._entries = [
            (bytes.fromhex(k.sha256), Principal(k.name, frozenset(k.scopes))) for k in keys
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, presented: bytes) -> Principal | None:
        digest = hashlib.sha256(presented).digest()
        found = None
        for stored, principal in self._entries:
            # Every entry is compared, without stopping at a match.
            if hmac.compare_digest(stored, digest):
                found = principal
        return found


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key of `Authorization: Bearer KEY` (or the password of `Basic`), else of
    `X-API-Key`; None if neither."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            if scheme.lower() == b"basic" and (password := _basic_password(token.strip())):
                return password
        elif name == b"x-api-key" and value.strip():
            api_key = value.strip()
    return api_key


def _basic_password(token: bytes) -> bytes | None:
    try:
        decoded = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[2].strip() or None


def client_name(scope: Scope) -> str | None:
    """The name of the key that authenticated this request; None when auth is off."""
    name = scope.get(_STATE_KEY)
    return name if isinstance(name, str) else None


_encode = msgspec.json.Encoder().encode


async def _refuse(send: Send, status: int, body: ErrorBody, challenge: str) -> None:
    payload = _encode(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"www-authenticate", challenge.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class AuthMiddleware:
    """Pure ASGI: refuses with 401 (no key, or one not configured) or 403 (a key without the
    scope) before the app sees the request; otherwise records the key's name in the scope
    (`client_name`) for the rate limiter."""

    def __init__(self, app: ASGIApp, *, keys: KeyStore, metrics_open: bool = True) -> None:
        self.app = app
        self.keys = keys
        self.metrics_open = metrics_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        need = required_scope(method, path, metrics_open=self.metrics_open)
        if need is None:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope["headers"])
        principal = None if presented is None else self.keys.find(presented)
        if principal is None:
            detail = (
                "no API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"
                if presented is None
                else "the API key is not one this server knows"
            )
            challenge = 'Bearer realm="tastemaker"'
            if path == "/console" or path.startswith("/console/"):
                challenge = 'Basic realm="tastemaker console", charset="UTF-8"'
            await _refuse(send, 401, ErrorBody("unauthorized", detail), challenge)
            return
        if not principal.allows(need):
            detail = f"API key {principal.name!r} lacks the {need!r} scope {method} {path} needs"
            challenge = f'Bearer realm="tastemaker", error="insufficient_scope", scope="{need}"'
            await _refuse(send, 403, ErrorBody("forbidden", detail), challenge)
            return
        scope[_STATE_KEY] = principal.name
        await self.app(scope, receive, send)


def install_auth(app: Starlette, serving: ServingConfig) -> None:
    """Put the key check in front of `app` when `serving` configures keys and auth is on."""
    if serving.auth == "keys" and serving.api_keys:
        keys = KeyStore(serving.api_keys)
        app.add_middleware(AuthMiddleware, keys=keys, metrics_open=not serving.metrics_auth)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(serving: ServingConfig) -> None:
    """Refuse (ConfigError) to serve a non-loopback address with no keys unless auth is
    explicitly off; log when the server will be open."""
    where = f"{serving.host}:{serving.port}"
    if serving.auth == "none":
        ignored = f"; the {len(serving.api_keys)} configured API keys are ignored"
        log.warning(
            "serving.auth = none: the API on %s is open to anyone who can reach it%s",
            where,
            ignored if serving.api_keys else "",
        )
        return
    if serving.api_keys:
        log.info("access control on: %d API keys", len(serving.api_keys))
        return
    if is_loopback(serving.host):
        log.warning(
            "no API keys configured: the API on %s is open to every process of this machine",
            where,
        )
        return
    raise ConfigError(
        f"serving.host {serving.host!r} is not a loopback address and no API keys are "
        "configured, so anyone who reaches the port could write events, change items and "
        "read users' features. Configure keys: `tastemaker keys new --name NAME --scopes "
        "read+ingest` prints a key and the [[serving.api_keys]] table (or the "
        "TASTEMAKER_SERVING__API_KEYS=NAME:SHA256:SCOPES form) that admits it. Or set "
        'serving.auth = "none" (TASTEMAKER_SERVING__AUTH=none) to serve without access control.'
    )


def _operation_security(method: str, path: str) -> tuple[list[dict[str, list[str]]], bool]:
    """An operation's `security` list, and whether it can answer 401/403."""
    if path == "/metrics":
        # Open unless `serving.metrics_auth`: anonymous ({}) or a key with `metrics`.
        return [{}, {"bearer": ["metrics"]}, {"apiKey": ["metrics"]}], True
    need = required_scope(method.upper(), path)
    if need is None:
        return [], False
    return [{"bearer": [need]}, {"apiKey": [need]}], True


def document_security(doc: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """Add the key schemes, each operation's scope and its 401/403 answers to an OpenAPI
    document whose error body is `error_ref`."""
    schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
    about = "An API key from `serving.api_keys`; `admin` implies every other scope."
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": about}
    schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    content = {"content": {"application/json": {"schema": error_ref}}}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            security, refusable = _operation_security(method, path)
            operation["security"] = security
            if refusable:
                responses = operation.setdefault("responses", {})
                responses["401"] = {"description": "No API key, or an unknown one", **content}
                responses["403"] = {"description": "The API key lacks the scope", **content}
