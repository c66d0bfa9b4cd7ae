from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tastemaker.datadir import MARKER, DataDirError, ServerLock, lock_holder, prepare_dir


def test_a_directory_tastemaker_did_not_make_is_never_emptied(tmp_path: Path) -> None:
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(DataDirError, match=f"not made by tastemaker.*{MARKER}"):
        prepare_dir(mine, empty=True)
    assert (mine / "keep.txt").read_text() == "mine"


def test_a_marked_directory_is_emptied_and_an_empty_one_adopted(tmp_path: Path) -> None:
    d = prepare_dir(tmp_path / "data", empty=True)
    (d / "store").mkdir()
    (d / "store" / "data.mdb").write_bytes(b"x")
    (d / "config.toml").write_text("")
    prepare_dir(d, empty=True)
    assert sorted(p.name for p in d.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (prepare_dir(empty, empty=False) / MARKER).exists()


def test_a_second_server_on_one_directory_is_refused_naming_the_first(tmp_path: Path) -> None:
    d = prepare_dir(tmp_path / "data", empty=True)
    with ServerLock(d / "store"):
        assert lock_holder(d) == str(os.getpid())
        with pytest.raises(DataDirError, match=f"pid {os.getpid()}"):
            ServerLock(d / "store")
        with pytest.raises(
            DataDirError, match=f"in use by a tastemaker server \\(pid {os.getpid()}"
        ):
            prepare_dir(d, empty=True)
    assert lock_holder(d) is None
    ServerLock(d / "store").release()


def test_the_lock_of_a_killed_server_is_free_again(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tastemaker.datadir import "
            "ServerLock; lock = ServerLock(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(60)",
            str(tmp_path / "store"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(tmp_path) == str(holder.pid)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert lock_holder(tmp_path) is None
    ServerLock(tmp_path / "store").release()
