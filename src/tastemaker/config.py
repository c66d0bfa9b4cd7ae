"""One typed, frozen config tree with defaults, read from TOML, overridable by environment.

Environment overrides use the prefix `TASTEMAKER_` and `__` between levels:
`TASTEMAKER_STORE__URL=embedded:///var/lib/tm/store`, `TASTEMAKER_SERVING__PORT=9000`.
`TASTEMAKER_SERVING__API_KEYS=NAME:SHA256:SCOPE+SCOPE,...` sets the list of API keys.
`TASTEMAKER_CONFIG` is reserved: it names the config file when `--config` is not given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from tastemaker.events import EventLimits, EventType
from tastemaker.features import (
    Centroid,
    CountByType,
    DecayedIntensity,
    DistinctCount,
    FeatureKind,
    Histogram,
    LastN,
    LastValue,
    Ratio,
    WindowedCount,
)

__all__ = ["ApiKey", "Config", "ConfigError", "dump_config", "load_config", "local_config"]

DAY = 86400.0
Positive = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(ValueError):
    """The config file or an override is invalid; the message names the setting."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class LogConfig(_Section, frozen=True):
    url: str = "embedded://tastemaker-data/log"
    # Retention of the embedded log (docs/privacy.md): records older than `retention_s` or
    # beyond the newest `retention_records` of a partition go, once every consumer group has
    # committed past them and each of `retention_groups` (and the stream's group) has too.
    retention_s: Positive | None = None
    retention_records: PositiveInt | None = None
    retention_groups: list[str] = msgspec.field(default_factory=lambda: ["archiver"])


class StoreConfig(_Section, frozen=True):
    url: str = "embedded://tastemaker-data/store"
    profile_ttl_s: Positive = 90 * DAY
    session_ttl_s: Positive = 1 * DAY
    covis_ttl_s: Positive = 30 * DAY


class CatalogConfig(_Section, frozen=True):
    path: str | None = None
    feed_url: str = "embedded://tastemaker-data/catalog"
    poll_interval_s: Positive = 1.0


class StreamConfig(_Section, frozen=True):
    group: str = "features"
    # This process's name in the consumer group, unique among the live members (two
    # processes with one name would both read its partitions); "" = `<hostname>-<pid>`.
    member: str = ""
    # The most records a microbatch reads; under a backlog a batch is sized to take about
    # `batch_target_s` (0: always `batch_size`). Under a steady load below capacity a batch
    # holds what arrived since the last one, whatever these are. A larger batch costs less an
    # event (a user's rows are read and written once a batch), so the target also sets the
    # most a process can sustain: docs/stream.md, "Batch size".
    batch_size: PositiveInt = 250_000
    batch_target_s: NonNegative = 2.0
    poll_interval_s: Positive = 0.2
    session_gap_s: Positive = 1800.0
    dedup_window_s: Positive = 7 * DAY
    popularity_half_life_s: Positive = 3 * DAY
    trending_half_life_s: Positive = 3600.0
    covis_window: PositiveInt = 5
    covis_max_neighbours: PositiveInt = 100
    # Neighbour maps a partition's stream keeps in memory between batches (most recently
    # used first), so a hot item's map is not read and decoded again every batch; a full map
    # is ~5.7 KB. 0 reads every map from the store.
    covis_held_maps: NonNegativeInt = 10_000
    # Co-visitation pairs of this many microbatches are summed, then merged into the items'
    # neighbour maps in one write; until then they wait in the store beside the log position
    # (`docs/stream.md`). 1 merges every batch. Pairs waiting when the log runs dry are
    # merged once they have waited `covis_merge_after_s`, and when the stream stops.
    covis_fold_batches: PositiveInt = 8
    covis_merge_after_s: NonNegative = 4.0
    top_popular: PositiveInt = 500
    top_per_category: PositiveInt = 200
    max_regions: PositiveInt = 32
    run_in_server: bool = True
    max_lag_events: PositiveInt = 1_000_000
    retry_after_s: PositiveInt = 1


class RankingConfig(_Section, frozen=True):
    """The scorer: a LightGBM model file if `model_path` is set (compiled to C with tl2cgen
    unless `compile_model` is false), else the linear scorer with `weights` over the candidate
    feature matrix."""

    model_path: str | None = None
    compile_model: bool = True
    weights: dict[str, float] = msgspec.field(
        default_factory=lambda: {
            "popularity": 0.15,
            "trending": 0.1,
            "covisitation": 0.9,
            "session_neighbours": 0.6,
            "category_retrieval": 0.3,
            "ann": 0.3,
            "emb_click_sim": 1.2,
            "category_affinity": 1.0,
            "brand_affinity": 0.5,
            "price_fit": 0.4,
            "session_category": 0.6,
            "item_knn": 0.8,
            "als": 0.4,
            "segment": 0.2,
        }
    )


Scope = Literal["ingest", "read", "admin", "metrics"]


class ApiKey(_Section, frozen=True):
    """A client's key, held only as its SHA-256 (`tastemaker keys new` makes one). `name` is
    what logs, errors and the rate limits (`api_key_rps`) call it; `admin` implies every
    other scope."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    sha256: Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)]


class ServingConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    default_n: PositiveInt = 10
    max_n: PositiveInt = 200
    popular_candidates: PositiveInt = 200
    trending_candidates: PositiveInt = 100
    covis_candidates: PositiveInt = 200
    session_candidates: PositiveInt = 100
    category_candidates: PositiveInt = 200
    ann_candidates: PositiveInt = 200
    ann_exact_below: PositiveInt = 20_000
    # Above ann_exact_below items: "ivf" (nprobe tuned at load to reach ann_recall of the
    # exact top ann_candidates) or "hnsw" (docs/serving.md has the measurements).
    # "pgvector": at any size, the HNSW index of the PostgreSQL table at ann_vector_url
    # (docs/pgvector.md).
    ann_index: Literal["ivf", "hnsw", "pgvector"] = "ivf"
    ann_vector_url: str | None = None
    ann_recall: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    item_knn_candidates: PositiveInt = 200
    als_candidates: PositiveInt = 200
    segment_candidates: PositiveInt = 100
    exclude_seen: bool = False
    exclude_shown: bool = True
    new_item_candidates: PositiveInt = 50
    new_item_slots: Annotated[int, msgspec.Meta(ge=0)] = 1
    new_item_window_s: Positive = 3 * DAY
    deadline_ms: Positive = 50.0
    budget_features_ms: Positive = 10.0
    budget_retrieve_ms: Positive = 20.0
    budget_rank_ms: Positive = 10.0
    cache_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    cache_size: PositiveInt = 100_000
    max_per_category: Annotated[int, msgspec.Meta(ge=0)] = 0
    mmr_lambda: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    rate_limit_rps: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    rate_limit_burst: PositiveInt = 100
    api_key_rps: dict[str, float] = msgspec.field(default_factory=dict)
    rate_limit_url: str | None = None
    global_cache_s: Positive = 1.0
    # Request bodies above this are refused with 413 as they stream in, never held whole;
    # 16 MiB holds a full batch of 10,000 events or of items with 64-number embeddings.
    max_body_bytes: PositiveInt = 16 * 1024 * 1024
    # JSON nested deeper is refused with 400 before decoding (no request needs more than 5).
    max_json_depth: Annotated[int, msgspec.Meta(ge=8, le=256)] = 32
    # Items' co-visitation neighbours: they change at most once a stream microbatch and only
    # by a little, so a longer cache costs no visible freshness (the user's own seeds are
    # read per request) and spares the store a read per long-tail seed.
    neighbour_cache_s: Positive = 10.0
    # Requests' backend calls (store reads, health probes, the shared rate limiter) run on a
    # pool of this many threads, never on the event loop. A request waits for them until its
    # deadline plus `deadline_grace_ms`, then answers without them (the degraded answer, or
    # 503 where there is none): docs/serving.md, "Slow backends".
    backend_threads: PositiveInt = 32
    deadline_grace_ms: NonNegative = 25.0
    # A backend's circuit opens after `breaker_failures` failures (timeouts included) within
    # `breaker_window_s`; while open its calls fail at once; after `breaker_cooldown_s` one
    # probe call goes through and closes it if it succeeds.
    breaker_failures: PositiveInt = 5
    breaker_window_s: Positive = 10.0
    breaker_cooldown_s: Positive = 5.0
    # /healthz and /readyz answer within this, from the last probe if the backends do not.
    health_timeout_ms: Positive = 500.0
    # /readyz fails when the stream is behind and has applied nothing for this long.
    stream_stall_s: Positive = 60.0
    # Access control (docs/serving.md): "keys" asks every request but the health checks and
    # the schema for one of `api_keys`; with none configured, a server on a loopback address
    # runs open and one on any other address refuses to start. "none": open on any address.
    auth: Literal["keys", "none"] = "keys"
    api_keys: list[ApiKey] = msgspec.field(default_factory=list)
    metrics_auth: bool = False  # true: /metrics needs a key with the `metrics` scope

    def __post_init__(self) -> None:
        if self.ann_index == "pgvector" and not (self.ann_vector_url or "").startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError('serving.ann_index = "pgvector" needs a postgresql:// ann_vector_url')
        for field in ("name", "sha256"):
            seen = [getattr(k, field).lower() for k in self.api_keys]
            if len(set(seen)) < len(seen):
                raise ConfigError(f"serving.api_keys: two keys have the same {field}")


class OfflineConfig(_Section, frozen=True):
    """The lake, the batch jobs and their artifacts (docs/offline.md)."""

    lake_url: str = "tastemaker-data/lake"
    artifacts_path: str = "tastemaker-data/artifacts"
    retention_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    archive_batch_size: PositiveInt = 50_000
    compact_min_files: PositiveInt = 8
    keep_versions: PositiveInt = 10
    schedule_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    reload_interval_s: Positive = 2.0
    feature_log_sample: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    seed: int = 0
    popularity_half_life_s: Positive = 30 * DAY
    covis_window: PositiveInt = 20
    covis_neighbours: PositiveInt = 100
    als_factors: PositiveInt = 64
    als_iterations: PositiveInt = 15
    als_regularization: Positive = 0.05
    als_alpha: Positive = 2.0
    segments: PositiveInt = 16
    segment_top: PositiveInt = 200
    ranker_trees: PositiveInt = 200
    ranker_leaves: PositiveInt = 15
    ranker_min_leaf: PositiveInt = 50
    ranker_learning_rate: Positive = 0.05
    ranker_negatives: PositiveInt = 300
    ranker_max_rows: PositiveInt = 2_000_000
    ranker_min_queries: PositiveInt = 20
    label_horizon_s: Positive = 7 * DAY


class LoggingConfig(_Section, frozen=True):
    """The log output of every process (`tastemaker/logs.py`)."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A traceback of the same exception type from the same place at most this often per
    # process; the failures in between log their line without it. 0: every traceback.
    traceback_interval_s: NonNegative = 10.0


def default_features() -> list[FeatureKind]:
    """The feature set of the demo shop; see docs/config.example.toml."""
    engaged = [
        EventType.VIEW,
        EventType.CLICK,
        EventType.ADD_TO_CART,
        EventType.PURCHASE,
        EventType.LIKE,
        EventType.RATE,
    ]
    return [
        CountByType("counts"),
        DecayedIntensity("category_intensity", field="category"),
        DecayedIntensity("brand_intensity", field="brand"),
        LastN("last_items", n=20),
        LastValue("last_clicked_brand", field="brand", types=[EventType.CLICK]),
        Histogram("price_hist"),
        Centroid("click_centroid"),
        WindowedCount("activity"),
        Ratio("ctr"),
        DistinctCount("distinct_categories"),
        LastN("purchased", n=500, types=[EventType.PURCHASE]),
        LastN("engaged_items", n=200, types=engaged),
        LastN("shown_items", n=50, types=[EventType.IMPRESSION]),
        CountByType("session_counts", family="session"),
        LastN("session_items", family="session", n=20, types=engaged),
        DecayedIntensity(
            "session_category", family="session", field="category", half_life_s=1800.0
        ),
    ]


class Config(_Section, frozen=True):
    log: LogConfig = LogConfig()
    store: StoreConfig = StoreConfig()
    catalog: CatalogConfig = CatalogConfig()
    stream: StreamConfig = StreamConfig()
    events: EventLimits = EventLimits()  # limits on ids, timestamps and context (events/limits)
    ranking: RankingConfig = RankingConfig()
    serving: ServingConfig = ServingConfig()
    offline: OfflineConfig = OfflineConfig()
    logging: LoggingConfig = LoggingConfig()
    features: list[FeatureKind] = msgspec.field(default_factory=default_features)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"features: duplicate name(s) {dupes}")
        bad = sorted({f.family for f in self.features} - {"profile", "session"})
        if bad:
            raise ConfigError(f"features: family must be 'profile' or 'session', got {bad}")
        if self.serving.exclude_seen and "engaged_items" not in names:
            raise ConfigError(
                "serving.exclude_seen needs a declared last_n feature named 'engaged_items'"
            )
        if self.serving.exclude_shown and "shown_items" not in names:
            raise ConfigError(
                "serving.exclude_shown needs a declared last_n feature named 'shown_items'"
            )


# Variables with the prefix that are not settings.
_RESERVED_ENV = frozenset({"TASTEMAKER_CONFIG", "TASTEMAKER_CACHE_DIR"})


def _api_keys_from_env(name: str, value: str) -> list[dict[str, Any]]:
    """`NAME:SHA256:SCOPE+SCOPE,...` as `[[serving.api_keys]]` tables. The parts are not
    echoed in errors: a key pasted where its hash belongs must not reach the logs."""
    keys = []
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigError(f"{name}: entry {i} is not NAME:SHA256:SCOPE+SCOPE")
        keys.append({"name": parts[0], "sha256": parts[1], "scopes": parts[2].split("+")})
    return keys


# Settings that are lists of tables, set from one variable in a compact form.
_ENV_PARSERS = {"TASTEMAKER_SERVING__API_KEYS": _api_keys_from_env}


def _apply_env(tree: dict[str, Any], env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not key.startswith("TASTEMAKER_") or key in _RESERVED_ENV:
            continue
        path = key.removeprefix("TASTEMAKER_").lower().split("__")
        if len(path) == 1:
            # Every setting is in a section, so a variable without `__` is not an override
            # (TASTEMAKER_TEST_* of the test harness, say), unless it looks like a mistyped one.
            section = next(
                (f for f in Config.__struct_fields__ if path[0].startswith(f + "_")), None
            )
            if section is not None:
                raise ConfigError(
                    f"{key}: write TASTEMAKER_{section.upper()}__SETTING (two underscores)"
                )
            continue
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {'.'.join(path)} is not a section")
            node = child
        parse = _ENV_PARSERS.get(key)
        node[path[-1]] = value if parse is None else parse(key, value)


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config from a TOML file (default: `$TASTEMAKER_CONFIG`, else built-in
    defaults), then apply `TASTEMAKER_*` overrides."""
    environ = os.environ if env is None else env
    if path is None:
        path = environ.get("TASTEMAKER_CONFIG") or None
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            tree = msgspec.toml.decode(p.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except msgspec.DecodeError as exc:
            raise ConfigError(f"config file {p}: {exc}") from exc
    _apply_env(tree, environ)
    try:
        # strict=False lets "9000" from an env var stand for an int.
        return msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def dump_config(config: Config, path: str | Path) -> Path:
    """Write `config` as a TOML file that `load_config` reads back equal (unset optional
    settings are left out: TOML has no null)."""
    p = Path(path)
    p.write_bytes(msgspec.toml.encode(_drop_none(msgspec.to_builtins(config))))
    return p


def local_config(
    root: str | Path, *, fsync: Literal["always", "never"] = "always", **sections: Any
) -> Config:
    """The embedded layout under one directory: `root/log`, `root/store`, `root/lake`,
    `root/artifacts` and the catalog at `root/catalog.parquet`; `sections` replace whole
    sections (`serving=ServingConfig(...)`). `fsync` is the log's and the store's policy:
    "never" survives a process crash but may lose the last moments on power loss."""
    r = Path(root).resolve()
    query = "" if fsync == "always" else f"?fsync={fsync}"
    base = Config(
        log=LogConfig(url=f"embedded://{r}/log{query}"),
        store=StoreConfig(url=f"embedded://{r}/store{query}"),
        catalog=CatalogConfig(path=str(r / "catalog.parquet"), feed_url=f"embedded://{r}/catalog"),
        offline=OfflineConfig(lake_url=str(r / "lake"), artifacts_path=str(r / "artifacts")),
    )
    return msgspec.structs.replace(base, **sections)
