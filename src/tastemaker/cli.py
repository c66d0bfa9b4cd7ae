"""The `tastemaker` command: demo, serve, stream, and dataset downloads."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import msgspec

from tastemaker.catalog import CatalogError
from tastemaker.config import Config, ConfigError, load_config
from tastemaker.data.movielens import MovieLensError

__all__ = ["main"]


def _serve(runtime_config: Config, config_path: str | None, workers: int) -> None:
    import uvicorn

    from tastemaker.serving.api import build_app
    from tastemaker.serving.runtime import Runtime

    s = runtime_config.serving
    if workers == 1:
        runtime = Runtime.from_config(runtime_config)
        if runtime_config.stream.run_in_server:
            runtime.start_stream()
        try:
            uvicorn.run(
                build_app(runtime), host=s.host, port=s.port, log_level="warning", access_log=False
            )
        finally:
            runtime.close()
        return
    if config_path is None:
        raise ConfigError("--workers > 1 needs --config FILE (each worker reads it)")
    stream = None
    if runtime_config.stream.run_in_server:
        stream = subprocess.Popen(
            [sys.executable, "-m", "tastemaker", "stream", "--config", config_path]
        )
    os.environ["TASTEMAKER_CONFIG"] = str(Path(config_path).resolve())
    try:
        uvicorn.run(
            "tastemaker.serving.asgi:create_app",
            factory=True,
            host=s.host,
            port=s.port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    finally:
        if stream is not None:
            stream.send_signal(signal.SIGTERM)
            stream.wait(timeout=15)


def _cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.host or args.port is not None:
        serving = msgspec.structs.replace(
            config.serving,
            host=args.host or config.serving.host,
            port=config.serving.port if args.port is None else args.port,
        )
        config = msgspec.structs.replace(config, serving=serving)
    print(
        f"tastemaker serving on http://{config.serving.host}:{config.serving.port} "
        f"(OpenAPI at /openapi.json)",
        flush=True,
    )
    _serve(config, args.config, args.workers)
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from tastemaker.serving.runtime import Runtime

    runtime = Runtime.from_config(load_config(args.config))
    processor = runtime.processor
    signal.signal(signal.SIGTERM, lambda *_: processor.stop())
    signal.signal(signal.SIGINT, lambda *_: processor.stop())
    try:
        processor.run()
    finally:
        runtime.close()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tastemaker.demo import run_demo

    data_dir = Path(args.data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    config = run_demo(
        data_dir, quick=args.quick, users=args.users, items=args.items, port=args.port
    )
    if args.quick:
        return 0
    print(
        f"\nServing the demo shop on http://127.0.0.1:{config.serving.port} (Ctrl-C to stop). Try:"
    )
    print(
        f"  curl -s -XPOST localhost:{config.serving.port}/v1/recommend "
        '-d \'{"user_id": "user0000001", "n": 5}\''
    )
    _serve(config, str(data_dir / "config.toml"), 1)
    return 0


def _cmd_movielens(args: argparse.Namespace) -> int:
    from tastemaker.data.movielens import load_movielens_100k

    ml = load_movielens_100k(Path(args.cache) if args.cache else None)
    print(
        f"MovieLens-100K: {len(ml.ratings)} ratings, {ml.n_users} users, {ml.n_items} movies, "
        f"cached in {ml.directory}"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tastemaker", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="generate a synthetic shop, ingest it, recommend, serve")
    d.add_argument("--quick", action="store_true", help="a small shop; exit instead of serving")
    d.add_argument("--users", type=int, default=None, help="number of users (default 20000)")
    d.add_argument("--items", type=int, default=None, help="number of items (default 5000)")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument(
        "--data-dir",
        default="tastemaker-demo-data",
        help="where the demo's log, store and catalog go (wiped first)",
    )
    d.set_defaults(func=_cmd_demo)
    s = sub.add_parser("serve", help="serve the HTTP API (and the stream) from a config")
    s.add_argument("--config", default=None, help="TOML config file (docs/config.example.toml)")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--workers", type=int, default=1, help="API worker processes")
    s.set_defaults(func=_cmd_serve)
    st = sub.add_parser("stream", help="run the stream processor as its own process")
    st.add_argument("--config", default=None)
    st.set_defaults(func=_cmd_stream)
    m = sub.add_parser("movielens", help="download MovieLens-100K into the user cache")
    m.add_argument("--cache", default=None, help="cache directory (default: user cache dir)")
    m.set_defaults(func=_cmd_movielens)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tastemaker` command."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = _parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, CatalogError, MovieLensError) as exc:
        print(f"tastemaker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
