"""Several API worker processes behind one listening socket, connections dealt round-robin,
and the stream processes beside them, each started again when it dies.

`tastemaker serve --workers N --stream-workers M` (unless both are 1: then the API and the
stream are one process) runs this supervisor. It binds the port, starts N
worker processes (`python -m tastemaker.serving.workers FD`, each a uvicorn server over the
app of `serving/asgi.py`), accepts every connection itself and hands it to the next ready
worker over a Unix socket pair (SCM_RIGHTS), as Node's `cluster` module does by default.

Why not uvicorn's own `workers=N`: there the workers share the listening socket, and the one
that wakes first accepts every connection pending at that moment. A client holding a few
keep-alive connections (a load balancer, a backend's connection pool) then often has all of
them on one worker while the other idles (as `benchmarks/bench_serving.py`'s keep-alive
connections showed: one worker busy, the other nearly idle, the rate asked not held). No
library we use deals accepted connections out to processes in the order they are accepted,
so this is written here over the standard library; the workers are uvicorn's own server,
adopting the sockets they are handed (`loop.connect_accepted_socket`).

What happens when a part is down:
- a worker that dies is started again within a second; until it reports ready, new
  connections go to the others (its open connections are lost with it);
- a worker that exits before it ever became ready (a bad config, a store that is down at
  start) stops the whole server with exit status 1: nothing would serve;
- a stream process (`python -m tastemaker stream`) that exits, whatever its status, is
  started again within a second (at most once a second each), counted in
  `tastemaker_stream_restarts_total`; its partitions wait for it or move to another
  stream process of the group meanwhile. One that keeps failing at start (its log or store
  is down) is started after 1, 2, 4, 8, then every 10 s;
- when the supervisor dies its workers see the pair close, finish their open requests and
  exit; its stream processes keep running until they are stopped.

Metrics: before it starts any process the supervisor makes a fresh directory and names it in
`PROMETHEUS_MULTIPROC_DIR`, so every child keeps its metrics there and any worker's
`/metrics` reports the whole deployment (`tastemaker/metrics.py`); when a child exits it
drops its `live*` gauges and folds its counters into those of the dead
(`tastemaker/metrics_files.py`), and it removes the directory when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn

from tastemaker.config import load_config
from tastemaker.logs import configure_logging
from tastemaker.metrics import SupervisorMetrics
from tastemaker.metrics_files import fold_dead_process

__all__ = ["serve_workers"]

log = logging.getLogger(__name__)

_READY = b"R"
_CONN = b"C"
_RESTART_EVERY_S = 1.0
# A stream process that fails by itself (a status > 0) within this long of its start cannot
# start (its log or store is down, say): each such failure doubles the wait before the next
# start, up to `_MAX_BACKOFF_S`, so that a long outage does not start and log one a second.
_CRASH_LOOP_S = 10.0
_MAX_BACKOFF_S = 10.0


@dataclass
class _Slot:
    """One worker: its process, the supervisor's end of its socket pair, whether it said it
    is ready, and whether it ever was."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    channel: socket.socket | None = None
    ready: bool = False
    was_ready: bool = False
    started_at: float = 0.0


@dataclass
class _Stream:
    """One stream process, when it was last started, and when it is to be started again
    (None while it runs) after waiting `backoff_s`."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff_s: float = 0.0


def restart_delay(started_at: float, now: float, status: int, backoff_s: float) -> float:
    """How long after `now` to start again a stream process started at `started_at` that
    exited with `status` (negative: killed by that signal) after a wait of `backoff_s` before
    its start: at most one start a second, and a doubling wait while it fails at start."""
    if status > 0 and now - started_at < _CRASH_LOOP_S:
        return min(max(2 * backoff_s, _RESTART_EVERY_S), _MAX_BACKOFF_S)
    return max(0.0, started_at + _RESTART_EVERY_S - now)


class _Supervisor:
    def __init__(
        self,
        host: str,
        port: int,
        workers: int,
        env: Mapping[str, str],
        *,
        stream_command: Sequence[str],
        streams: int,
    ) -> None:
        self.listener = socket.create_server((host, port), backlog=2048)
        self.listener.setblocking(False)
        self.env = dict(env)
        self.slots = [_Slot(i) for i in range(workers)]
        self.stream_command = list(stream_command)
        self.streams = [_Stream(i) for i in range(streams)]
        self.selector = selectors.DefaultSelector()
        self.accepting = False
        self.stopping = False
        self.next = 0
        self.metrics = SupervisorMetrics()
        self.unfolded: set[int] = set()  # dead children whose metrics files wait to be folded

    # -- workers -------------------------------------------------------------------------

    def start(self, slot: _Slot) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        slot.proc = subprocess.Popen(
            [sys.executable, "-m", "tastemaker.serving.workers", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=self.env,
        )
        theirs.close()
        mine.setblocking(False)
        slot.channel = mine
        slot.ready = False
        slot.started_at = time.monotonic()
        self.selector.register(mine, selectors.EVENT_READ, slot)

    def lost(self, slot: _Slot) -> None:
        """The worker's pair closed or refused a connection: no more connections for it."""
        slot.ready = False
        if slot.channel is not None:
            self.selector.unregister(slot.channel)
            slot.channel.close()
            slot.channel = None

    def check(self) -> None:
        """Start again any worker or stream process that exited; fail if a worker exits
        before it was ever ready."""
        now = time.monotonic()
        if self.unfolded:
            self.fold()
        for slot in self.slots:
            if slot.proc is None or slot.proc.poll() is None:
                continue
            code = slot.proc.returncode
            self.lost(slot)
            self.exited(slot.proc)
            if not slot.was_ready:
                log.error("API worker %d exited with status %s at start", slot.index, code)
                raise SystemExit(1)
            if now - slot.started_at < _RESTART_EVERY_S:
                continue  # a worker dying at once again: not more than one start a second
            log.warning("API worker %d exited with status %s; starting it again", slot.index, code)
            self.start(slot)
            self.metrics.worker_restarts.inc(1)
        self.check_streams(now)

    def check_streams(self, now: float) -> None:
        """Start again any stream process that exited, whatever its status: the stream
        stops only with the supervisor."""
        for stream in self.streams:
            if stream.proc is None or stream.proc.poll() is None:
                continue
            if stream.restart_at is None:  # it exited since the last check
                self.exited(stream.proc)
                code = stream.proc.returncode
                delay = restart_delay(stream.started_at, now, code, stream.backoff_s)
                stream.backoff_s = delay if code > 0 and delay >= _RESTART_EVERY_S else 0.0
                stream.restart_at = now + delay
                log.warning(
                    "stream process %d exited with status %s; starting it again in %.1f s",
                    stream.index,
                    code,
                    delay,
                )
            if now >= stream.restart_at:
                self.start_stream(stream)
                self.metrics.stream_restarts.inc(1)

    def start_stream(self, stream: _Stream) -> None:
        stream.proc = subprocess.Popen(self.stream_command, env=self.env)
        stream.started_at = time.monotonic()
        stream.restart_at = None

    def exited(self, proc: subprocess.Popen[bytes]) -> None:
        """A child exited: its `live*` gauges leave the deployment's metrics, its counters
        stay counted (folded into those of the dead, now or at a later check)."""
        self.unfolded.add(proc.pid)
        self.fold()

    def fold(self) -> None:
        directory = self.env["PROMETHEUS_MULTIPROC_DIR"]
        self.unfolded = {pid for pid in self.unfolded if not fold_dead_process(pid, directory)}

    def on_channel(self, slot: _Slot) -> None:
        assert slot.channel is not None
        try:
            message = slot.channel.recv(16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if message == _READY:
            slot.ready = slot.was_ready = True
            if not self.accepting and all(s.ready for s in self.slots):
                # Start accepting once every worker is up, so the first connections are
                # spread over all of them and not all given to the first one loaded.
                self.accepting = True
                self.selector.register(self.listener, selectors.EVENT_READ, None)
        elif message == b"":
            self.lost(slot)

    # -- connections ---------------------------------------------------------------------

    def on_accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                log.warning("accept failed", exc_info=True)
                return
            with conn:
                self.deal(conn)

    def deal(self, conn: socket.socket) -> None:
        """Hand `conn` to the next ready worker; closed (the client retries) if none is."""
        n = len(self.slots)
        for _ in range(n):
            slot = self.slots[self.next % n]
            self.next += 1
            if not slot.ready or slot.channel is None:
                continue
            try:
                socket.send_fds(slot.channel, [_CONN], [conn.fileno()])
            except (BlockingIOError, InterruptedError):
                continue  # its pair is full (a worker stuck for long): the next one
            except OSError:
                self.lost(slot)
                continue
            return
        log.warning("no API worker is ready; a connection was closed")

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        def stop(*_: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            for slot in self.slots:
                self.start(slot)
            for stream in self.streams:
                self.start_stream(stream)
            while not self.stopping:
                for key, _ in self.selector.select(timeout=0.25):
                    if key.data is None:
                        self.on_accept()
                    else:
                        self.on_channel(key.data)
                self.check()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.listener.close()
        children = [*(s.proc for s in self.slots), *(s.proc for s in self.streams)]
        procs = [p for p in children if p is not None and p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.close()
        self.selector.close()


def serve_workers(
    host: str,
    port: int,
    workers: int,
    env: Mapping[str, str],
    *,
    stream_command: Sequence[str] = (),
    streams: int = 0,
) -> None:
    """Serve the app of `serving/asgi.py` (its config named by `TASTEMAKER_CONFIG` in `env`)
    from `workers` processes, and run `streams` processes of `stream_command` beside them,
    until SIGTERM or SIGINT."""
    if streams and not stream_command:
        raise ValueError("streams > 0 needs the stream processes' command")
    with _metrics_directory() as directory:
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": directory}
        _Supervisor(host, port, workers, env, stream_command=stream_command, streams=streams).run()


@contextlib.contextmanager
def _metrics_directory() -> Iterator[str]:
    """A fresh directory for the multiprocess metrics of the children started in it, named
    in this process's environment too (the supervisor's own counters are files there);
    removed at the end. Fresh, so that no file of an earlier run is summed in."""
    directory = tempfile.mkdtemp(prefix="tastemaker-metrics-")
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield directory
    finally:
        if before is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
        shutil.rmtree(directory, ignore_errors=True)


# -- the worker side -------------------------------------------------------------------------


class _Worker(uvicorn.Server):
    """A uvicorn server that takes its connections from the supervisor's socket pair instead
    of accepting them from a listening socket."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket) -> None:
        super().__init__(config)
        self.channel = channel
        self.opening: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:  # noqa: ARG002
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(3)
        config, state, app_state = self.config, self.server_state, self.lifespan.state

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=app_state
            )
            return made

        loop = asyncio.get_running_loop()
        self.channel.setblocking(False)
        loop.add_reader(self.channel.fileno(), self._take, loop, protocol)
        self.servers = []
        self.started = True
        self.channel.send(_READY)

    def _take(self, loop: asyncio.AbstractEventLoop, protocol: Any) -> None:
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self.channel, 16, 1)
            except BlockingIOError:
                return
            except OSError:
                self._orphaned(loop)
                return
            if not fds:
                self._orphaned(loop)
                return
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            # As asyncio does for the sockets its servers accept: a response written in two
            # parts must not wait for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)

    def _orphaned(self, loop: asyncio.AbstractEventLoop) -> None:
        """The supervisor is gone: finish what is open and exit."""
        loop.remove_reader(self.channel.fileno())
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with contextlib.suppress(ValueError, OSError):  # the pair is already gone
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        await super().shutdown(sockets)


def _worker_main(fd: int) -> None:
    channel = socket.socket(fileno=fd)
    lg = load_config().logging  # the file named by TASTEMAKER_CONFIG, as the app reads it
    configure_logging(lg.format, lg.level, lg.traceback_interval_s)
    config = uvicorn.Config(
        "tastemaker.serving.asgi:create_app",
        factory=True,
        log_level="warning",
        log_config=None,  # uvicorn's records go to the handler of `tastemaker.logs`
        access_log=False,
    )
    _Worker(config, channel).run()


if __name__ == "__main__":
    # Exit at once when uvicorn is done: the runtime's watcher threads are not joined, and
    # waiting for them at interpreter exit would keep a stopped worker alive.
    code = 0
    try:
        _worker_main(int(sys.argv[1]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
