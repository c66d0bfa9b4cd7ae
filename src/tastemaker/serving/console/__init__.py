"""The web console at `/console`: live operations overview, user and item inspectors.

Server-rendered HTML pages, a little vanilla JavaScript and uPlot (MIT, vendored under
`static/`, so the console works offline). The pages read JSON from `/console/api/*`, which
answers from what the public API reads (the metrics registry `/metrics` exports, the
pipeline's features, recommend and similar calls, the catalog, the artifacts' manifests), and
`/healthz`. Nothing of the console runs until a page asks: it starts no thread and adds no
work to `/v1/recommend`. Every `/console` path needs the `admin` scope where keys are
configured (serving/auth.py); a browser is asked for the key as a Basic password.
"""

from tastemaker.serving.console.routes import console_routes

__all__ = ["console_routes"]
