"""Optional dependencies: what each `pip install 'tastemaker[EXTRA]'` adds, and the error a
feature raises when its extra is not installed.

A base install serves the API on embedded storage or Redis. `kafka` adds the Kafka event log;
`offline` the batch jobs, evaluation, the LambdaMART ranker and faiss's approximate index;
`all` every extra."""

from __future__ import annotations

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(ImportError):
    """A feature needs a package of an extra that is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs {package}, part of the '{extra}' extra: "
            f"pip install 'tastemaker[{extra}]'"
        )


def missing_extra(package: str, extra: str, feature: str) -> MissingExtraError:
    """The error to raise `from` the ImportError of `package`, e.g.

    try:
        import duckdb
    except ImportError as exc:
        raise missing_extra("duckdb", "offline", "training on logged features") from exc
    """
    return MissingExtraError(package, extra, feature)
