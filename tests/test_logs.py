"""The log output of `tastemaker.logs`: tracebacks rate-limited, JSON lines."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import msgspec
import pytest

from tastemaker.logs import TEXT_FORMAT, JsonFormatter, TracebackLimiter, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def out(clock: Clock) -> Iterator[io.StringIO]:
    """What a logger whose handler has the limiter (10 s) writes, as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(TracebackLimiter(10.0, clock))
    logger = logging.getLogger("tests.limited")
    logger.addHandler(handler)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)
    logger.propagate = True


def fail(exc: Exception, what: str = "store") -> None:
    """One degraded request: logs its line with the exception, from one place."""
    try:
        raise exc
    except Exception:
        logging.getLogger("tests.limited").warning("%s failed; degraded", what, exc_info=True)


def fail_elsewhere(exc: Exception) -> None:
    try:
        raise exc
    except Exception:
        logging.getLogger("tests.limited").exception("batch failed")


def test_the_same_failure_shows_its_traceback_once_an_interval(
    out: io.StringIO, clock: Clock
) -> None:
    for _ in range(5):
        fail(ConnectionError("down"))
        clock.now += 1
    lines = out.getvalue().splitlines()
    assert sum("Traceback (most recent call last)" in line for line in lines) == 1
    # One line a failure all the same: the first with its traceback, the others with the
    # exception's type and message.
    assert [line for line in lines if line.startswith("WARNING")] == [
        "WARNING store failed; degraded",
        *["WARNING store failed; degraded: ConnectionError: down"] * 4,
    ]
    clock.now += 10
    out.truncate(0)
    out.seek(0)
    fail(ConnectionError("down"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING store failed; degraded [4 more like this since the last traceback]"
    assert "Traceback (most recent call last)" in lines[1]
    assert lines[-1] == "ConnectionError: down"


def test_another_exception_type_or_place_has_its_own_traceback(out: io.StringIO) -> None:
    fail(ConnectionError("down"))
    fail(TimeoutError("slow"))  # same place, another type
    fail_elsewhere(ConnectionError("down"))  # same type, another place
    fail(ConnectionError("down"))
    fail(TimeoutError())  # no message
    text = out.getvalue()
    assert text.count("Traceback (most recent call last)") == 3
    assert "degraded: ConnectionError: down\n" in text
    assert text.endswith("degraded: TimeoutError\n")


def test_records_without_an_exception_and_a_zero_interval_pass_untouched(
    clock: Clock,
) -> None:
    limiter = TracebackLimiter(0.0, clock)
    try:
        raise ValueError("x")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "m %s", ("a",), None)
        record.exc_info = sys.exc_info()
    for _ in range(3):
        assert limiter.filter(record)
        assert record.exc_info is not None
        assert record.getMessage() == "m a"
    plain = logging.LogRecord("t", logging.INFO, __file__, 1, "m %s", ("a",), None)
    assert TracebackLimiter(10.0, clock).filter(plain)
    assert (plain.msg, plain.args) == ("m %s", ("a",))


def test_json_lines_hold_time_level_logger_message_and_exception() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("plain %d\nsecond line", 1)
        try:
            raise KeyError("k")
        except KeyError:
            logger.exception('with "quotes"')
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # a newline in a message stays inside its line's JSON
    first, second = (msgspec.json.decode(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "message", "pid"}
    assert (first["level"], first["logger"], first["message"]) == (
        "WARNING",
        "tests.json",
        "plain 1\nsecond line",
    )
    assert first["ts"].endswith("Z")
    assert first["ts"][10] == "T"
    assert second["message"] == 'with "quotes"'
    assert second["level"] == "ERROR"
    assert second["exception"].startswith("Traceback (most recent call last)")
    assert second["exception"].endswith("KeyError: 'k'")


def test_configure_logging_replaces_its_own_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    hooks = sys.excepthook, threading.excepthook
    try:
        configure_logging("text")
        configure_logging("json", "WARNING", 10.0)
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        assert isinstance(added[0].formatter, JsonFormatter)
        logging.getLogger("tests.configured").info("not shown")
        logging.getLogger("tests.configured").warning("shown")
        err = capsys.readouterr().err.splitlines()
        assert [msgspec.json.decode(line)["message"] for line in err] == ["shown"]
        configure_logging("text")
        (text,) = [h for h in root.handlers if h not in before]
        assert text.formatter is not None
        assert text.formatter._fmt == TEXT_FORMAT
        assert sys.excepthook is sys.__excepthook__  # the JSON call's hook is gone
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)
        sys.excepthook, threading.excepthook = hooks


def test_in_json_an_uncaught_exception_is_a_json_line_too() -> None:
    code = (
        "import threading\n"
        "from tastemaker.logs import configure_logging\n"
        "configure_logging('json')\n"
        "def fail(): raise KeyError('in a thread')\n"
        "t = threading.Thread(target=fail, name='worker-1'); t.start(); t.join()\n"
        "raise ValueError('boom')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert done.returncode == 1
    records = [msgspec.json.decode(line) for line in done.stderr.decode().splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [
        ("CRITICAL", "uncaught exception in thread worker-1"),
        ("CRITICAL", "uncaught exception"),
    ]
    assert records[0]["exception"].endswith("KeyError: 'in a thread'")
    assert records[1]["exception"].endswith("ValueError: boom")
