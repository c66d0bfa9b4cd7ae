"""The docs and the code describe the system as it is, not how it got there.

No reference to numbered development sessions or runs, no development dates (history belongs
in git and CHANGELOG.md), and docs/ short enough to read: at most `DOCS_MAX_LINES` lines of
text in all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("docs", "src", "tests", "benchmarks")
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico"}
DOCS_MAX_LINES = 1_500

# A numbered diary entry ("session N", "Sessions N-M"); a user's session is never numbered so.
SESSION = re.compile(r"\b[Ss]essions? \d+\b")
# A numbered benchmark run of the diary ("run N", "runs N and M"); docs only, where benchmark
# runs are counted in words.
RUN = re.compile(r"\b[Rr]uns? \d+\b")
# A calendar date in prose ("Measured YYYY-MM-DD", "(YYYY-MM-DD, ..."). Not a date inside a
# path or assignment (`day=YYYY-MM-DD`), a quoted string (test data), or an ISO timestamp
# (`YYYY-MM-DDTHH:MM:SSZ`, which documents an epoch constant).
DATE = re.compile(r"(?<![\w=\"'/.-])20\d\d-[01]\d-[0-3]\d(?![\w:\"'/-])")


def _text_files(top: str) -> list[Path]:
    files = []
    for path in sorted((ROOT / top).rglob("*")):
        built = "__pycache__" in path.parts or any(p.endswith(".egg-info") for p in path.parts)
        if not path.is_file() or path.suffix.lower() in IMAGES or built:
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def _hits(pattern: re.Pattern[str], files: list[Path]) -> list[str]:
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


@pytest.mark.parametrize("top", SCANNED)
def test_no_numbered_sessions_or_development_dates(top: str) -> None:
    files = _text_files(top)
    assert files, f"nothing to scan under {top}/"
    found = _hits(SESSION, files) + _hits(DATE, files)
    if top == "docs":
        found += _hits(RUN, files)
    assert not found, "diary references (history goes in git and CHANGELOG.md):\n" + "\n".join(
        found
    )


def test_docs_fit_their_line_budget() -> None:
    counts = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _text_files("docs")
    }
    total = sum(counts.values())
    table = "\n".join(f"{n:6d} {name}" for name, n in sorted(counts.items()))
    assert total <= DOCS_MAX_LINES, f"docs/ has {total} lines (at most {DOCS_MAX_LINES}):\n{table}"


def test_the_patterns_tell_diary_from_legitimate_text() -> None:
    date = "-".join(["2026", "11", "23"])
    diary = [
        f"Session {4} (the encoder)",
        f"measured in session {18}",
        f"sessions {8}-9",
        f"Measured {date} on this machine",
        f"| {date}, this 2-core machine |",
        f"Run {8} ({date}, ...)",
    ]
    legitimate = [
        f"<lake>/events/day={date}/part-1-2.parquet",
        f'assert lake.days() == ["{date}"]',
        f"EPOCH = 1_577_836_800.0  # {date}T00:00:00Z",
        "a new session after `stream.session_gap_s` of inactivity",
        "five runs of 30 s each; 2 sessions a user",
    ]
    for text in diary:
        assert SESSION.search(text) or DATE.search(text) or RUN.search(text), text
    for text in legitimate:
        assert not SESSION.search(text), text
        assert not DATE.search(text), text
        assert not RUN.search(text), text
