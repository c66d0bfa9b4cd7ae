"""`tastemaker users erase ID...` and `tastemaker log trim`."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import msgspec

from tastemaker.artifacts.store import ArtifactStore
from tastemaker.config import load_config
from tastemaker.features.layout import default_families
from tastemaker.log import open_log
from tastemaker.offline.lake import Lake
from tastemaker.privacy.erasure import Eraser, check_user_ids
from tastemaker.privacy.retention import trim_log
from tastemaker.store import open_store

__all__ = ["add_commands"]


def _cmd_erase(args: argparse.Namespace) -> int:
    try:
        users = check_user_ids(args.user_ids)
    except ValueError as exc:
        print(f"tastemaker: error: {exc}", file=sys.stderr)
        return 2
    config = load_config(args.config)
    s, o = config.store, config.offline
    log_ = open_log(config.log.url)
    store = open_store(
        s.url,
        default_families(
            profile_ttl_s=s.profile_ttl_s, session_ttl_s=s.session_ttl_s, covis_ttl_s=s.covis_ttl_s
        ),
        seen_ttl_s=config.stream.dedup_window_s,
    )
    try:
        eraser = Eraser(
            log_,
            store,
            lake=Lake(o.lake_url),
            artifacts=ArtifactStore(o.artifacts_path, keep=o.keep_versions),
        )
        report = eraser.erase(users)
    finally:
        store.close()
        log_.close()
    print(msgspec.json.encode(dataclasses.asdict(report)).decode())
    return 0


def _cmd_trim(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    log_ = open_log(config.log.url)
    try:
        deleted = trim_log(log_, config)
    finally:
        log_.close()
    print(f"log retention deleted {deleted} records")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser("users", help="erase users (docs/privacy.md)")
    usub = u.add_subparsers(dest="users_command", required=True)
    e = usub.add_parser(
        "erase", help="erase users from the store, the log, the lake and the artifacts"
    )
    e.add_argument("user_ids", nargs="+", metavar="ID")
    e.add_argument("--config", default=None, help="TOML config (default: built-in)")
    e.set_defaults(func=_cmd_erase)
    lg = sub.add_parser("log", help="event log maintenance")
    lsub = lg.add_subparsers(dest="log_command", required=True)
    t = lsub.add_parser("trim", help="apply log.retention_s / retention_records (embedded log)")
    t.add_argument("--config", default=None, help="TOML config (default: built-in)")
    t.set_defaults(func=_cmd_trim)
