"""The console's routes: four pages, their static files and the JSON they read."""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tastemaker.deployment.offload import DeadlineExceededError
from tastemaker.deployment.runtime import Runtime
from tastemaker.ranking.rerank import Filters
from tastemaker.recommend.pipeline import Request as PipelineRequest
from tastemaker.serving.console.data import item_view, summary, user_view
from tastemaker.store import StoreError

__all__ = ["console_routes"]

_encode = msgspec.json.Encoder().encode
_PACKAGE = resources.files("tastemaker.serving.console")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain"}
# (path, template, title, nav label); the order is the navigation's.
_PAGES = (
    ("/console", "overview", "Overview"),
    ("/console/users", "users", "User inspector"),
    ("/console/items", "items", "Item inspector"),
    ("/console/experiments", "experiments", "Experiments"),
)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of `static/`, read once: (content, media type) by name."""
    out = {}
    for entry in (_PACKAGE / "static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        out[entry.name] = (entry.read_bytes(), _TYPES.get(suffix, "application/octet-stream"))
    return out


def _template(name: str) -> Template:
    return Template((_PACKAGE / "templates" / f"{name}.html").read_text("utf-8"))


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(status: int, error: str, detail: str) -> Response:
    return _json({"error": error, "detail": detail}, status)


def _render_page(layout: Template, path: str, body: Template, request: Request) -> str:
    """The page: navigation, and the body with each query parameter (escaped) filled in as
    `$q_NAME` (empty when absent); a `$$` in a template is a literal `$`."""
    nav = "".join(
        f'<a href="{p}"{" class=here" if p == path else ""}>{label}</a>' for p, _, label in _PAGES
    )
    params = dict.fromkeys(body.get_identifiers(), "")
    params.update((f"q_{k}", html.escape(v, quote=True)) for k, v in request.query_params.items())
    title = next(label for p, _, label in _PAGES if p == path)
    return layout.substitute(
        title=title, nav=nav, page=path.rsplit("/", 1)[-1], body=body.substitute(params)
    )


def _recommend_options(request: Request, max_n: int) -> PipelineRequest | str:
    """The recommend options of the user inspector's query, or what is wrong with them."""
    q = request.query_params
    raw_n = q.get("n", "10")
    if not raw_n.isdigit() or not 1 <= int(raw_n) <= max_n:
        return f"n must be an integer in 1..{max_n}, got {raw_n!r}"
    filters = None
    if q.get("filters", "").strip():
        try:
            filters = msgspec.json.decode(q["filters"], type=Filters)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return f"filters: {exc}"
    return PipelineRequest(
        n=int(raw_n),
        filters=filters,
        explain=q.get("explain", "true") != "false",
        region=q.get("region") or None,
        device=q.get("device") or None,
    )


def console_routes(runtime: Runtime) -> list[Route]:
    """The console's routes, for `build_app` to list (all `admin` scope: serving/auth.py)."""
    layout = _template("layout")
    static = _static_files()
    offload = runtime.offload
    s = runtime.config.serving
    wait_s = (s.deadline_ms + s.deadline_grace_ms) / 1e3

    def page(path: str, name: str) -> Route:
        body = _template(name)

        async def render(request: Request) -> Response:
            text = _render_page(layout, path, body, request)
            return Response(text, media_type="text/html; charset=utf-8")

        return Route(path, render, methods=["GET"])

    async def get_static(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return _error(404, "not_found", f"no console file {request.path_params['name']!r}")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "max-age=3600"})

    async def get_summary(_: Request) -> Response:
        return _json(await offload.run(wait_s, summary, runtime))

    async def get_user(request: Request) -> Response:
        options = _recommend_options(request, s.max_n)
        if isinstance(options, str):
            return _error(400, "invalid_request", options)
        user_id = request.path_params["user_id"]
        try:
            return _json(await offload.run(wait_s, user_view, runtime, user_id, options))
        except (DeadlineExceededError, StoreError) as exc:
            return _error(503, "store_unavailable", f"the online store did not answer: {exc}")

    async def get_item(request: Request) -> Response:
        item_id = request.path_params["item_id"]
        try:
            # 30: enough that each retriever's own best ten are among the merged ones.
            found = await offload.run(wait_s, item_view, runtime, item_id, 30)
        except (DeadlineExceededError, StoreError) as exc:
            return _error(503, "store_unavailable", f"the online store did not answer: {exc}")
        if found is None:
            return _error(404, "unknown_item", f"item {item_id!r} is not in the catalog")
        return _json(found)

    return [
        *(page(path, name) for path, name, _ in _PAGES),
        Route("/console/static/{name:str}", get_static, methods=["GET"]),
        Route("/console/api/summary", get_summary, methods=["GET"]),
        Route("/console/api/users/{user_id:str}", get_user, methods=["GET"]),
        Route("/console/api/items/{item_id:str}", get_item, methods=["GET"]),
    ]
