"""Run the README's shell blocks in order, as a new user would, and time each.

Every ```sh block in README.md follows an HTML comment that says what to do with it:

- `<!-- readme: run -->`: runs anywhere (tests/test_readme.py runs these in a fresh
  directory, with the installed `tastemaker`);
- `<!-- readme: clone -->`: needs the repository checkout or takes minutes: only
  scripts/newcomer-check runs it (in a fresh clone);
- `<!-- readme: skip REASON -->`: not run; the reason is printed.

The blocks run one after another in one bash (`set -eo pipefail`), so a server a block starts
with `&` serves the next blocks, and `cd` or `. .venv/bin/activate` carry over; `curl` fails
on an HTTP error status. At the end every process the blocks started is stopped.

    python -m tastemaker.testing.readme README.md [--kinds run,clone] [--cwd DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["Block", "Outcome", "parse_blocks", "run_blocks"]

_MARKER = re.compile(r"<!--\s*readme:\s*(run|clone|skip)\b\s*(.*?)\s*-->")
_FENCE = re.compile(r"^```(\w*)\s*$")
_SHELLS = {"sh", "bash", "shell", "console"}
_PRELUDE = (
    "set -eo pipefail\n"
    'curl() { command curl --fail-with-body "$@"; }\n'  # an HTTP error fails the block
)


class ReadmeError(ValueError):
    """A shell block without a marker, or a marker without a block."""


@dataclass(frozen=True)
class Block:
    line: int  # where the block starts in the file (1-based)
    kind: str  # run, clone or skip
    reason: str
    text: str

    @property
    def title(self) -> str:
        first = next((ln for ln in self.text.splitlines() if ln.strip()), "")
        return first.split("  #")[0].strip()[:60]


@dataclass(frozen=True)
class Outcome:
    block: Block
    status: str  # PASS, FAIL, SKIP, NOT RUN
    seconds: float
    output: str


def parse_blocks(markdown: str) -> list[Block]:
    """The shell blocks with their markers; raises when a shell block has no marker."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    pending: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        marker = _MARKER.search(lines[i])
        fence = _FENCE.match(lines[i])
        if marker:
            pending = (marker.group(1), marker.group(2))
        elif fence:
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if fence.group(1) in _SHELLS:
                if pending is None:
                    raise ReadmeError(
                        f"line {start + 1}: a shell block without <!-- readme: run|clone|skip -->"
                    )
                blocks.append(Block(start + 1, pending[0], pending[1], "\n".join(body) + "\n"))
            pending = None
        elif lines[i].strip() and pending is not None:
            raise ReadmeError(f"line {i + 1}: a readme marker not followed by a code block")
        i += 1
    return blocks


def _reader(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def run_blocks(
    blocks: list[Block],
    cwd: Path,
    *,
    kinds: frozenset[str],
    env: dict[str, str] | None = None,
    timeout_s: float = 900.0,
    echo: bool = True,
) -> list[Outcome]:
    """Run the blocks of `kinds` in order in one bash in `cwd`; after a failure the rest are
    not run. Prints one line per block when `echo`."""
    shell = subprocess.Popen(
        ["bash"],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its process group: every server a block started
    )
    assert shell.stdin is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_reader, args=(shell.stdout, lines), daemon=True)
    reader.start()
    shell.stdin.write(_PRELUDE)
    outcomes: list[Outcome] = []
    failed = False
    try:
        for n, block in enumerate(blocks):
            if block.kind not in kinds or failed:
                status = "NOT RUN" if failed else "SKIP"
                outcomes.append(Outcome(block, status, 0.0, block.reason or block.kind))
            else:
                outcomes.append(_run_one(shell, lines, block, n, timeout_s))
                failed = outcomes[-1].status != "PASS"
            if echo:
                _print(outcomes[-1])
    finally:
        with contextlib.suppress(OSError):
            shell.stdin.close()
        _stop(shell)
        reader.join(timeout=10)  # EOF once every process of the group is gone
        if not reader.is_alive() and shell.stdout is not None:
            shell.stdout.close()
    return outcomes


def _run_one(
    shell: subprocess.Popen[str],
    lines: queue.Queue[str | None],
    block: Block,
    n: int,
    timeout_s: float,
) -> Outcome:
    stdin = shell.stdin
    assert stdin is not None
    sentinel = f"__readme_block_{n}_done__"
    started = time.monotonic()
    # Sourced from a file with stdin from /dev/null: a command that reads stdin must not
    # read the blocks that follow.
    script = Path(tempfile.gettempdir()) / f"readme-block-{os.getpid()}-{n}.sh"
    script.write_text(block.text)
    stdin.write(f"source {script} </dev/null\nrm -f {script}\necho {sentinel}\n")
    stdin.flush()
    output: list[str] = []
    while True:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            return Outcome(block, "FAIL", time.monotonic() - started, "".join(output) + "timeout")
        try:
            line = lines.get(timeout=min(left, 0.2))
        except queue.Empty:
            # A server started with `&` keeps the output open: the shell's exit (a command
            # failed under `set -e`) is seen by polling it.
            if shell.poll() is not None and lines.empty():
                return Outcome(block, "FAIL", time.monotonic() - started, "".join(output))
            continue
        if line is None:
            return Outcome(block, "FAIL", time.monotonic() - started, "".join(output))
        if line.rstrip("\n").endswith(sentinel):  # output without a final newline precedes it
            output.append(line.rstrip("\n")[: -len(sentinel)])
            return Outcome(block, "PASS", time.monotonic() - started, "".join(output))
        output.append(line)


def _stop(shell: subprocess.Popen[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(shell.pid, sig)
        except ProcessLookupError:
            break
        try:
            shell.wait(timeout=wait)
            time.sleep(0.5)  # servers the shell started leave after it
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(shell.pid, signal.SIGKILL)


def _print(o: Outcome) -> None:
    detail = f"  ({o.output})" if o.status in ("SKIP", "NOT RUN") else ""
    print(f"{o.status:7s} {o.seconds:6.1f} s  line {o.block.line:4d}: {o.block.title}{detail}")
    if o.status == "FAIL":
        tail = o.output.splitlines()[-40:]
        print("\n".join(f"        | {ln}" for ln in tail))
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_blocks(blocks: list[Block], port: int) -> list[Block]:
    """The blocks with `localhost:8000` read as `localhost:PORT` (for a machine where 8000
    is taken; the servers get `TASTEMAKER_SERVING__PORT`)."""
    return [
        Block(b.line, b.kind, b.reason, b.text.replace("localhost:8000", f"localhost:{port}"))
        for b in blocks
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("readme", type=Path)
    p.add_argument("--kinds", default="run,clone", help="which markers to run")
    p.add_argument("--cwd", type=Path, default=Path.cwd())
    args = p.parse_args(argv)
    blocks = parse_blocks(args.readme.read_text())
    env = dict(os.environ)
    try:
        with socket.create_connection(("127.0.0.1", 8000), timeout=0.5):
            port = free_port()
    except OSError:
        port = 8000
    if port != 8000:
        print(f"port 8000 is taken here: the blocks use {port} (TASTEMAKER_SERVING__PORT)")
        env["TASTEMAKER_SERVING__PORT"] = str(port)
        blocks = port_blocks(blocks, port)
    started = time.monotonic()
    outcomes = run_blocks(blocks, args.cwd, kinds=frozenset(args.kinds.split(",")), env=env)
    passed = sum(o.status == "PASS" for o in outcomes)
    failed = [o for o in outcomes if o.status in ("FAIL", "NOT RUN")]
    print(
        f"{passed} passed, {len(failed)} failed or not run, "
        f"{sum(o.status == 'SKIP' for o in outcomes)} skipped "
        f"in {time.monotonic() - started:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
