"""Backend URLs: `scheme://path?key=value`. One parser for every registry."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import msgspec

__all__ = ["BackendUrl", "parse_url"]


class BackendUrl(msgspec.Struct, frozen=True):
    scheme: str
    path: str
    params: dict[str, str]


def parse_url(url: str) -> BackendUrl:
    """`embedded:///abs/dir` -> path `/abs/dir`; `embedded://rel/dir` -> path `rel/dir`."""
    parts = urlsplit(url)
    if not parts.scheme:
        raise ValueError(f"backend URL {url!r} has no scheme (expected e.g. embedded://PATH)")
    path = parts.netloc + parts.path
    if not path:
        raise ValueError(f"backend URL {url!r} names no path")
    return BackendUrl(scheme=parts.scheme, path=path, params=dict(parse_qsl(parts.query)))
