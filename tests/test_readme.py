"""The README's shell blocks: each is marked, and the `run` ones work as printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import tastemaker
from tastemaker.testing.readme import ReadmeError, free_port, parse_blocks, port_blocks, run_blocks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_shell_block_is_marked_and_skips_say_why() -> None:
    blocks = parse_blocks(README.read_text())
    kinds = [b.kind for b in blocks]
    assert kinds.count("run") >= 5
    assert "clone" in kinds
    assert all(b.reason for b in blocks if b.kind == "skip")
    first = blocks[0].text.split()
    assert [w for w in first if w.startswith("./scripts/")] == ["./scripts/demo", "./scripts/test"]


def test_block_extraction() -> None:
    text = (
        "intro\n<!-- readme: run -->\n```sh\necho one\n```\n"
        "```toml\n[a]\n```\n<!-- readme: skip needs Kafka -->\n```sh\nkafka\n```\n"
    )
    blocks = parse_blocks(text)
    assert [(b.kind, b.reason, b.text, b.line) for b in blocks] == [
        ("run", "", "echo one\n", 3),
        ("skip", "needs Kafka", "kafka\n", 10),
    ]
    with pytest.raises(ReadmeError, match="line 1: a shell block without"):
        parse_blocks("```sh\necho unmarked\n```\n")
    with pytest.raises(ReadmeError, match="not followed by a code block"):
        parse_blocks("<!-- readme: run -->\ntext\n```sh\nx\n```\n")


def test_a_failing_block_fails_and_stops_the_rest(tmp_path: Path) -> None:
    blocks = parse_blocks(
        "<!-- readme: run -->\n```sh\nfalse\necho after\n```\n"
        "<!-- readme: run -->\n```sh\necho next\n```\n"
    )
    outcomes = run_blocks(blocks, tmp_path, kinds=frozenset({"run"}), echo=False)
    assert [o.status for o in outcomes] == ["FAIL", "NOT RUN"]
    assert "after" not in outcomes[0].output


@pytest.mark.slow
def test_the_run_blocks_work_as_printed_in_a_fresh_directory(tmp_path: Path) -> None:
    port = free_port()
    src = str(Path(tastemaker.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": src,
        "TASTEMAKER_SERVING__PORT": str(port),
    }
    blocks = port_blocks(parse_blocks(README.read_text()), port)
    outcomes = run_blocks(blocks, tmp_path, kinds=frozenset({"run"}), env=env, echo=False)
    failed = [(o.block.line, o.output[-2000:]) for o in outcomes if o.status == "FAIL"]
    assert not failed
    assert all(o.status in ("PASS", "SKIP") for o in outcomes)
    recommend = next(o for o in outcomes if o.status == "PASS" and "/v1/recommend" in o.block.text)
    assert '"item_id":"tent-2"' in recommend.output  # like the tent ann looked at
