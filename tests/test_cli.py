from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tastemaker.cli import main


@pytest.mark.slow
def test_demo_quick_runs_the_whole_path_and_exits(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tastemaker",
            "demo",
            "--quick",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 120
    out = done.stdout
    assert "events/s" in out
    assert "taste match" in out
    assert "cold start" in out
    assert (tmp_path / "demo" / "config.toml").exists()


def test_serve_with_a_bad_config_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[serving]\nport = -1\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "port" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "none.toml")]) == 2
    path.write_text("[serving]\nport = 0\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "catalog.path is not set" in capsys.readouterr().err
