"""The embedded store's `fsync` policy: what `never` keeps, and how a URL asks for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tastemaker.store import Cell, EmbeddedStore, FamilySpec, Mutation, open_store

FAMILIES = [FamilySpec("profile", ttl_s=None)]

# A writer that commits with fsync=never, says so, and is then killed before it can close.
_WRITER = """
import sys, time
from tastemaker.store import Cell, FamilySpec, Mutation, open_store
store = open_store(sys.argv[1], [FamilySpec("profile", None)])
for i in range(50):
    store.write([Mutation(f"u:{i}", "profile", {"n": Cell(1.0, i)})], seen=[f"e{i}"])
print("written", flush=True)
time.sleep(60)
"""


def test_a_killed_process_loses_no_commit_without_fsync(tmp_path: Path) -> None:
    url = f"embedded://{tmp_path}/s?fsync=never"
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None
        try:
            assert writer.stdout.readline().strip() == "written"
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait()
    store = open_store(url, FAMILIES)
    rows = [f"u:{i}" for i in range(50)]
    got = store.get(rows, ["profile"])
    assert [got[r]["profile"]["n"].value for r in rows] == list(range(50))
    assert store.seen([f"e{i}" for i in range(51)]) == {f"e{i}" for i in range(50)}
    store.close()


def test_the_url_sets_the_policy_and_one_process_keeps_one(tmp_path: Path) -> None:
    lazy = open_store(f"embedded://{tmp_path}/a?fsync=never", FAMILIES)
    assert isinstance(lazy, EmbeddedStore)
    assert lazy._env.flags()["sync"] is False
    strict = open_store(f"embedded://{tmp_path}/b", FAMILIES)
    assert isinstance(strict, EmbeddedStore)
    assert strict._env.flags()["sync"] is True
    # LMDB opens a file once per process: a second policy for the same file is refused.
    with pytest.raises(ValueError, match=r"already open in this process with fsync='never'"):
        open_store(f"embedded://{tmp_path}/a?fsync=always", FAMILIES)
    lazy.write([Mutation("u:1", "profile", {"n": Cell(1.0, 1)})])
    lazy.close()  # syncs what the OS has not written yet
    again = open_store(f"embedded://{tmp_path}/a", FAMILIES)  # now free to open as "always"
    assert again.get(["u:1"], ["profile"])["u:1"]["profile"]["n"] == Cell(1.0, 1)
    again.close()
    strict.close()
    with pytest.raises(ValueError, match="fsync must be 'always' or 'never'"):
        open_store(f"embedded://{tmp_path}/c?fsync=sometimes", FAMILIES)
    with pytest.raises(ValueError, match="fsync must be 'always' or 'never'"):
        EmbeddedStore(tmp_path / "d", FAMILIES, fsync="sometimes")  # type: ignore[arg-type]
