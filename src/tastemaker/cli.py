"""The `tastemaker` command: demo, serve, stream, batch jobs, API keys and dataset downloads."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tastemaker.artifacts.store import ArtifactError
from tastemaker.catalog import CatalogError
from tastemaker.cli_support import check_port, progress_of, quiet_third_party
from tastemaker.config import ApiKey, Config, ConfigError, ServingConfig, load_config
from tastemaker.data.movielens import MovieLensError
from tastemaker.datadir import DataDirError, ServerLock, prepare_dir, server_lock_dir
from tastemaker.deployment.evaluate import EvalError
from tastemaker.deployment.scheduler import OfflineBusyError
from tastemaker.extras import MissingExtraError
from tastemaker.log import LogError
from tastemaker.logs import configure_logging, logs_json
from tastemaker.offline.jobs import JobError
from tastemaker.privacy.cli import add_commands as add_privacy_commands
from tastemaker.store import StoreError

__all__ = ["main"]


def _serve(
    runtime_config: Config, config_path: str | None, workers: int, stream_workers: int = 1
) -> None:
    """One process (API and the stream thread) when `workers` is 1 and at most one stream
    processor runs; else the supervisor of `serving/workers.py` with `workers` API processes
    and `stream_workers` stream processes, each started again when it dies."""
    from tastemaker.serving.workers import serve_workers

    s = runtime_config.serving
    streams = stream_workers if runtime_config.stream.run_in_server else 0
    if workers == 1 and streams <= 1:
        _serve_one_process(runtime_config)
        return
    if not hasattr(socket, "send_fds"):
        raise ConfigError("--workers > 1 deals connections to processes over Unix sockets")
    if config_path is None:
        raise ConfigError("--workers or --stream-workers > 1 needs --config FILE")
    path = str(Path(config_path).resolve())
    serve_workers(
        s.host,
        s.port,
        workers,
        {**os.environ, "TASTEMAKER_CONFIG": path},
        stream_command=[sys.executable, "-m", "tastemaker", "stream", "--config", path],
        streams=streams,
    )


def _serve_one_process(runtime_config: Config) -> None:
    import uvicorn

    from tastemaker.deployment.runtime import Runtime, freeze_loaded_heap
    from tastemaker.serving.api import build_app

    s = runtime_config.serving
    runtime = Runtime.from_config(runtime_config)
    runtime.watch_artifacts()
    runtime.watch_catalog()
    if runtime_config.stream.run_in_server:
        runtime.start_stream()
        runtime.start_scheduler()
    freeze_loaded_heap()
    try:
        uvicorn.run(
            build_app(runtime),
            host=s.host,
            port=s.port,
            log_level="warning",
            log_config=None,  # uvicorn's records go to the handler of `tastemaker.logs`
            access_log=False,
        )
    finally:
        runtime.close()


def _configure_logging(args: argparse.Namespace) -> Config:
    """The command's config, its logging applied; `--log-format` overrides the config's and,
    set in the environment, that of every process `serve` starts."""
    if getattr(args, "log_format", None):
        os.environ["TASTEMAKER_LOGGING__FORMAT"] = args.log_format
    config = load_config(args.config)
    lg = config.logging
    configure_logging(lg.format, lg.level, lg.traceback_interval_s)
    return config


def _cmd_serve(args: argparse.Namespace) -> int:
    from tastemaker.serving.auth import check_exposure

    config = _configure_logging(args)
    if args.host or args.port is not None:
        serving = msgspec.structs.replace(
            config.serving,
            host=args.host or config.serving.host,
            port=config.serving.port if args.port is None else args.port,
        )
        config = msgspec.structs.replace(config, serving=serving)
    check_exposure(config.serving)  # before anything slow is loaded
    if config.catalog.path is None:
        raise ConfigError(
            "catalog.path is not set in the config: tastemaker serves items from a catalog "
            "file. `tastemaker init DIR` writes a config (and an empty catalog) that serves "
            "at once; or set catalog.path to your items' Parquet or CSV file"
        )
    check_port(config.serving.host, config.serving.port)
    lock_dir = server_lock_dir(config)
    with contextlib.ExitStack() as held:
        if lock_dir is not None:
            held.enter_context(ServerLock(lock_dir))
        print(
            f"tastemaker serving on http://{config.serving.host}:{config.serving.port} "
            f"(OpenAPI at /openapi.json)",
            flush=True,
        )
        _serve(config, args.config, args.workers, args.stream_workers)
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from tastemaker.deployment.runtime import Runtime, freeze_loaded_heap

    runtime = Runtime.from_config(_configure_logging(args))
    runtime.watch_catalog()  # items added through POST /v1/items in the API processes
    runtime.start_scheduler()  # archiver + batch jobs, if offline.schedule_interval_s > 0
    processor = runtime.processor
    signal.signal(signal.SIGTERM, lambda *_: processor.stop())
    signal.signal(signal.SIGINT, lambda *_: processor.stop())
    freeze_loaded_heap()  # the catalog's index: full collections between batches skip it
    try:
        processor.run()
    finally:
        runtime.close()
    return 0


def _serving_from_env(host: str | None, port: int | None) -> ServingConfig:
    """The demo's serving settings: `TASTEMAKER_SERVING__*` from the environment, as `serve`
    reads them, under the command line's `--host`/`--port`; no keys (loopback only)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TASTEMAKER_SERVING__")}
    serving = load_config(None, env=env).serving
    return msgspec.structs.replace(
        serving, host=host or serving.host, port=serving.port if port is None else port
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from tastemaker.demo import run_demo
    from tastemaker.serving.auth import check_exposure

    serving = _serving_from_env(args.host, args.port)
    check_exposure(serving)
    if not args.quick:
        check_port(serving.host, serving.port)  # before the shop is built
    data_dir = prepare_dir(Path(args.data_dir), empty=True)
    with ServerLock(data_dir / "store"):  # where `serve` on its config.toml locks
        config = run_demo(data_dir, quick=args.quick, users=args.users, items=args.items)
        if args.quick:
            return 0
        config = msgspec.structs.replace(config, serving=serving)
        url = f"http://{serving.host}:{serving.port}"
        print(f"\nServing the demo shop on {url} (Ctrl-C to stop). Try:")
        print(f"  the console: {url}/console")
        body = '{"user_id": "user0000001", "n": 5}'
        print(f"  curl -s -H 'Content-Type: application/json' {url}/v1/recommend -d '{body}'")
        _serve(config, str(data_dir / "config.toml"), 1)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from tastemaker.catalog import Catalog, save_catalog
    from tastemaker.config import dump_config, local_config

    directory = Path(args.dir)
    if (directory / "config.toml").exists():
        raise DataDirError(f"{directory / 'config.toml'} exists: init does not overwrite it")
    prepare_dir(directory, empty=False)
    catalog = directory / "catalog.parquet"
    if not catalog.exists():
        empty = np.zeros((0, args.dim), np.float32)
        save_catalog(
            Catalog(ids=[], titles=[], categories=[], brands=[], prices=[], embeddings=empty),
            catalog,
        )
    serving = msgspec.structs.replace(ServingConfig(), port=args.port)
    path = dump_config(local_config(directory, serving=serving), directory / "config.toml")
    print(
        f"wrote {path} (embedded log and store under {directory}; no items yet: add them with "
        f"POST /v1/items, {args.dim}-number embeddings). Next:\n"
        f"  tastemaker serve --config {path}"
    )
    return 0


def _cmd_movielens(args: argparse.Namespace) -> int:
    from tastemaker.data.movielens import load_movielens_100k

    ml = load_movielens_100k(Path(args.cache) if args.cache else None)
    print(
        f"MovieLens-100K: {len(ml.ratings)} ratings, {ml.n_users} users, {ml.n_items} movies, "
        f"cached in {ml.directory}"
    )
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from tastemaker.log import open_log
    from tastemaker.offline.lake import Archiver, Lake

    config = load_config(args.config)
    o = config.offline
    log_ = open_log(config.log.url)
    try:
        with progress_of("archiving", quiet=args.quiet, verbose=args.verbose):
            lake = Lake(o.lake_url)
            result = Archiver(log_, lake).run_once(o.archive_batch_size)
            compacted = lake.compact(o.compact_min_files)
            expired = lake.expire(o.retention_days, time.time())
    finally:
        log_.close()
    if args.json:
        summary = {
            "events": result.events,
            "files": result.files,
            "watermark": result.watermark,
            "compacted_files": compacted,
            "expired_days": list(expired),
        }
        print(msgspec.json.encode(summary).decode())
        return 0
    print(
        f"archived {result.events} events into {result.files} files (lake holds offsets up to "
        f"{result.watermark}); compaction removed {compacted} files; expired days: "
        f"{', '.join(expired) or 'none'}"
    )
    return 0


def _cmd_jobs_run(args: argparse.Namespace) -> int:
    from tastemaker.catalog import load_catalog
    from tastemaker.deployment.scheduler import run_offline
    from tastemaker.log import open_log

    config = load_config(args.config)
    catalog = load_catalog(config.catalog.path) if config.catalog.path else None
    if catalog is None and "ranker" in (args.names or ["ranker"]):
        print(
            "tastemaker: no catalog.path in the config: the ranker job is skipped", file=sys.stderr
        )
    log_ = None if args.no_archive else open_log(config.log.url)
    try:
        while True:
            with progress_of("batch jobs", quiet=args.quiet, verbose=args.verbose):
                run = run_offline(config, log_, catalog, args.names, archive=not args.no_archive)
            if args.json:
                print(msgspec.json.encode(_run_summary(run)).decode(), flush=True)
            elif run.archived is not None:
                print(
                    f"archive: {run.archived.events} new events, watermark {run.archived.watermark}"
                )
            for name, v in {} if args.json else run.versions.items():
                if v is None:
                    print(f"{name}: nothing new")
                else:
                    m = v.manifest
                    print(
                        f"{name}: version {m.version} ({m.events_read} events read, "
                        f"offsets {m.data_from_offset}..{m.watermark}) {dict(m.rows)}"
                    )
            if not args.every:
                return 0
            time.sleep(args.every)
    finally:
        if log_ is not None:
            log_.close()


def _run_summary(run: Any) -> dict[str, Any]:
    """One `jobs run` as JSON: the archive's new events and each job's new version (null:
    nothing new)."""
    archived = run.archived
    return {
        "archived_events": None if archived is None else archived.events,
        "watermark": None if archived is None else archived.watermark,
        "versions": {
            name: None if v is None else v.manifest.version for name, v in run.versions.items()
        },
    }


def _cmd_artifacts(args: argparse.Namespace) -> int:
    from tastemaker.artifacts.store import ArtifactStore

    config = load_config(args.config)
    store = ArtifactStore(config.offline.artifacts_path, keep=config.offline.keep_versions)
    if args.action == "rollback":
        v = store.rollback(args.name, args.version)
        print(f"{args.name}: version {v.manifest.version} is current again")
        return 0
    names = [args.name] if args.name else store.names()
    if not names:
        print(f"no artifacts under {store.root}")
    for name in names:
        current = store.current_version(name)
        for v in store.versions(name):
            m = v.manifest
            mark = "*" if m.version == current else " "
            metrics = " ".join(f"{k}={x:.4g}" for k, x in m.metrics.items())
            print(
                f"{mark} {name:13s} v{m.version:<4d} "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(m.created_at))}  "
                f"offsets {m.data_from_offset}..{m.watermark}  events {m.events_read}  "
                f"{dict(m.rows)} {metrics} [{m.code_version}]"
            )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tastemaker.deployment.evaluate import chart, evaluate, print_table

    with progress_of(f"evaluating on {args.dataset}", quiet=args.quiet, verbose=args.verbose):
        result = evaluate(args.dataset, seed=args.seed, users=args.users)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    png = Path(args.chart) if args.chart else out.with_suffix(".png")
    chart(result, png)
    print_table(result)
    print(f"wrote {out} and {png}")
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from tastemaker.serving.auth import hash_key, new_key

    if args.keys_command == "hash":
        key = args.key if args.key not in (None, "-") else sys.stdin.readline().strip()
        if not key:
            raise ConfigError("keys hash: no key given (as an argument or on stdin)")
        print(hash_key(key))
        return 0
    scopes = args.scopes.split("+")
    key = new_key()
    try:
        entry = msgspec.convert(
            {"name": args.name, "sha256": hash_key(key), "scopes": scopes}, ApiKey
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"keys new: {exc}") from exc
    print(f"key: {key}\n(give the key to its client; the server keeps only the hash below)\n")
    print(msgspec.toml.encode({"serving": {"api_keys": [msgspec.to_builtins(entry)]}}).decode())
    print(f"or: TASTEMAKER_SERVING__API_KEYS={entry.name}:{entry.sha256}:{'+'.join(scopes)}")
    return 0


_LOG_FORMAT = "log lines as text or one JSON object each (default: logging.format)"
_CONFIG = "TOML config file (default: $TASTEMAKER_CONFIG, else built-in defaults)"
_HOST = "address to listen on (default: serving.host, 127.0.0.1)"
_PORT = "port to listen on (default: serving.port, 8000; or TASTEMAKER_SERVING__PORT)"


def _common() -> argparse.ArgumentParser:
    """Options every command takes."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument(
        "-v", "--verbose", action="store_true", help="every log line, third-party ones too"
    )
    c.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display; warnings and results only"
    )
    return c


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tastemaker")
    except PackageNotFoundError:  # run from a source tree without an install
        return "unknown (not installed)"


def _serving_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help=_HOST)
    p.add_argument("--port", type=int, default=None, help=_PORT)


def _add_demo_init_serve(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "demo", parents=[common], help="generate a synthetic shop, ingest it, recommend, serve"
    )
    d.add_argument("--quick", action="store_true", help="a small shop; exit instead of serving")
    d.add_argument("--users", type=int, default=None, help="number of users (default 20000)")
    d.add_argument("--items", type=int, default=None, help="number of items (default 5000)")
    _serving_options(d)
    d.add_argument(
        "--data-dir",
        default="tastemaker-demo-data",
        help="where the demo's log, store and catalog go; emptied first if an earlier demo "
        "made it, refused if it holds anything else",
    )
    d.set_defaults(func=_cmd_demo)
    i = sub.add_parser(
        "init", parents=[common], help="a config and data directory on embedded storage"
    )
    i.add_argument("dir", help="the directory to create (or an empty one)")
    i.add_argument("--dim", type=int, default=16, help="item embedding length (default 16)")
    i.add_argument("--port", type=int, default=8000, help="serving.port in the config")
    i.set_defaults(func=_cmd_init)
    s = sub.add_parser(
        "serve", parents=[common], help="serve the HTTP API (and the stream) from a config"
    )
    s.add_argument("--config", default=None, help=_CONFIG)
    _serving_options(s)
    s.add_argument("--workers", type=int, default=1, help="API worker processes")
    s.add_argument(
        "--stream-workers",
        type=int,
        default=1,
        help="stream processes sharing the log's partitions (one reader a partition at a time)",
    )
    s.add_argument("--log-format", choices=["text", "json"], default=None, help=_LOG_FORMAT)
    s.set_defaults(func=_cmd_serve)


def _add_offline(sub: Any, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("movielens", parents=[common], help="download MovieLens-100K")
    m.add_argument(
        "--cache", default=None, help="directory (default: $TASTEMAKER_CACHE_DIR or user cache)"
    )
    m.set_defaults(func=_cmd_movielens)
    a = sub.add_parser("archive", parents=[common], help="copy the event log into the lake")
    a.add_argument("--config", default=None, help=_CONFIG)
    a.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a.set_defaults(func=_cmd_archive)
    j = sub.add_parser("jobs", help="batch jobs")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    jr = jsub.add_parser(
        "run", parents=[common], help="archive, then run the named jobs (default: all)"
    )
    jr.add_argument(
        "names", nargs="*", help="ranker, popularity, covisitation, embeddings, segments"
    )
    jr.add_argument("--config", default=None, help=_CONFIG)
    jr.add_argument("--no-archive", action="store_true", help="only read what the lake has")
    jr.add_argument("--every", type=float, default=0.0, help="repeat every N seconds")
    jr.add_argument("--json", action="store_true", help="print each run as one JSON object")
    jr.set_defaults(func=_cmd_jobs_run)
    ar = sub.add_parser("artifacts", help="list artifact versions, or roll one back")
    asub = ar.add_subparsers(dest="action", required=True)
    al = asub.add_parser(
        "list", parents=[common], help="every kept version; * marks the current one"
    )
    al.add_argument("name", nargs="?", default=None)
    al.add_argument("--config", default=None, help=_CONFIG)
    al.set_defaults(func=_cmd_artifacts)
    rb = asub.add_parser("rollback", parents=[common], help="make an older version current")
    rb.add_argument("name")
    rb.add_argument("version", type=int)
    rb.add_argument("--config", default=None, help=_CONFIG)
    rb.set_defaults(func=_cmd_artifacts)
    ev = sub.add_parser(
        "evaluate", parents=[common], help="tastemaker against baselines on a time split"
    )
    ev.add_argument("--dataset", default="movielens-100k", help="movielens-100k or synthetic")
    ev.add_argument("--json", required=True, help="where the JSON result goes")
    ev.add_argument("--chart", default=None, help="PNG chart (default: beside --json)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--users", type=int, default=3000, help="synthetic dataset: users")
    ev.set_defaults(func=_cmd_evaluate)


def _add_keys(sub: Any, common: argparse.ArgumentParser) -> None:
    k = sub.add_parser("keys", help="make API keys and their hashes (serving.api_keys)")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser(
        "new", parents=[common], help="a fresh random key, its hash and its config entry"
    )
    kn.add_argument("--name", required=True, help="what logs and rate limits call the key")
    kn.add_argument(
        "--scopes", default="read", help="ingest, read, admin, metrics joined by + (default read)"
    )
    kn.set_defaults(func=_cmd_keys)
    kh = ksub.add_parser("hash", parents=[common], help="the SHA-256 a config holds for a key")
    kh.add_argument("key", nargs="?", default=None, help="the key (default: read from stdin)")
    kh.set_defaults(func=_cmd_keys)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tastemaker", description=__doc__)
    p.add_argument("--version", action="version", version=f"tastemaker {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    common = _common()
    _add_demo_init_serve(sub, common)
    st = sub.add_parser(
        "stream", parents=[common], help="run the stream processor as its own process"
    )
    st.add_argument("--config", default=None, help=_CONFIG)
    st.add_argument("--log-format", choices=["text", "json"], default=None, help=_LOG_FORMAT)
    st.set_defaults(func=_cmd_stream)
    _add_offline(sub, common)
    _add_keys(sub, common)
    add_privacy_commands(sub)  # users erase, log trim
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tastemaker` command."""
    configure_logging()  # until a command has read its config's [logging]
    args = _parser().parse_args(argv)
    quiet_third_party(getattr(args, "verbose", False))
    try:
        code: int = args.func(args)
    except (
        ConfigError,
        CatalogError,
        MovieLensError,
        ArtifactError,
        JobError,
        EvalError,
        OfflineBusyError,
        LogError,  # the log's server is unreachable at start, say
        StoreError,
        DataDirError,
        MissingExtraError,
    ) as exc:
        if logs_json():
            logging.getLogger("tastemaker").error("%s", exc)
        else:
            print(f"tastemaker: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
