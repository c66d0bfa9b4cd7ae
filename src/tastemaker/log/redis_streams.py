"""Event log on Redis Streams (Redis >= 6.2 or Valkey, standalone).

Layout, under a key prefix (default `tm:log`):
- `<prefix>:p<N>`: one stream per partition; an event goes to the partition of its user
  (`partition_of`), so one user's events stay in order. One entry per event, field `e` = the
  event in msgpack. An append is one MULTI/EXEC: all of a batch or none.
- `<prefix>:committed:<group>`: a hash, partition -> the last offset the group committed.
- consumer groups are Redis consumer groups on every partition's stream (XREADGROUP, XACK);
  which member reads which partition is decided by leases, `<prefix>:lease:<group>:<N>`
  (SET NX PX, renewed by the owner) and a heartbeat set `<prefix>:members:<group>`, so each
  partition has one reader at a time and a user's events are applied in order. A member that
  dies stops renewing; after `lease_s` another member takes its partitions and XAUTOCLAIMs
  the messages the dead one had read and not acknowledged.

Offsets: a stream entry id `ms-seq` is the integer `ms << 20 | seq` (seq stays far below 2^20:
it counts entries added within one millisecond), so offsets grow but are not dense.

Retention: entries older than `retention_s` (default 7 days) are trimmed by age
(`XTRIM MINID`, approximate) at most once a minute by each appending process, consumed or not,
as Kafka's retention does. The lake keeps the events for longer.

What happens when Redis is down or hangs: every command has a reply timeout (`timeout_s`,
the URL's `timeout_ms`) and is never retried by redis-py. `append` raises `LogError` (the API
answers 503; nothing is half-written thanks to MULTI/EXEC, and `maybe_written` says whether
the whole batch may have been written: the transaction was sent and its reply lost).
Consumers raise `LogError` from `poll`, and the stream processor retries after a pause; the
entries a lost read's reply held are pending on the member, which reads its own pending
entries before new ones (`RedisStreamsConsumer._read`).
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from tastemaker.events import Event, EventType
from tastemaker.log.base import LogError, LogRecord, partition_of
from tastemaker.redisio import SentCommands

__all__ = ["RedisStreamsConsumer", "RedisStreamsLog"]

_SEQ_BITS = 20
_SEQ_MASK = (1 << _SEQ_BITS) - 1
_MS_MAX = (1 << (63 - _SEQ_BITS)) - 1  # an offset is a signed 64-bit integer
_TRIM_EVERY_S = 60.0

# Keeps the larger of two offsets: they are decimal strings of up to 19 digits, beyond the
# doubles Lua numbers are, so they are compared by length, then as strings.
_COMMIT = """
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local new = ARGV[i + 1]
  if (not cur) or #new > #cur or (#new == #cur and new > cur) then
    redis.call('HSET', KEYS[1], ARGV[i], new)
  end
end
return 0
"""

# One member's heartbeat and its share of the partitions: live members are those whose
# heartbeat has not expired; each may own ceil(partitions / live) partitions. Leases of the
# caller are renewed, extras given up (a member joined), free ones taken (a member left or
# died). Returns the partitions owned and the live members.
_REBALANCE = """
local me, lease_ms, n, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + lease_ms, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
local fair = math.ceil(n / #live)
local owned = {}
for p = 0, n - 1 do
  if redis.call('GET', prefix .. p) == me then table.insert(owned, p) end
end
while #owned > fair do
  redis.call('DEL', prefix .. table.remove(owned))
end
for _, p in ipairs(owned) do redis.call('PEXPIRE', prefix .. p, lease_ms) end
local p = 0
while #owned < fair and p < n do
  if redis.call('SET', prefix .. p, me, 'NX', 'PX', lease_ms) then table.insert(owned, p) end
  p = p + 1
end
return {owned, live}
"""

_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
for p = 0, tonumber(ARGV[2]) - 1 do
  if redis.call('GET', ARGV[3] .. p) == ARGV[1] then redis.call('DEL', ARGV[3] .. p) end
end
return 0
"""


def offset_of(entry_id: bytes | str) -> int:
    """The integer offset of a stream entry id `ms-seq`."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    s = int(seq)
    if s > _SEQ_MASK:
        raise LogError(f"stream entry id {text} has a sequence beyond 2^{_SEQ_BITS}")
    return int(ms) << _SEQ_BITS | s


def offsets_of(entry_ids: Sequence[bytes | str]) -> list[int]:
    """`offset_of` of many ids at once: numpy parses every `ms` and `seq` as one text,
    several times faster than `offset_of` one id at a time or casting the split ids."""
    if not entry_ids:
        return []
    raw = [i.encode() if isinstance(i, str) else i for i in entry_ids]
    text = b" ".join(raw)
    if text.count(b"-") != len(raw):  # one dash an id
        raise LogError(f"malformed stream entry ids among {raw[:3]!r}...")
    text = text.replace(b"-", b" ")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy < 2.3 warns where it stopped parsing
            parts = np.fromstring(text, dtype=np.int64, sep=" ")  # text mode: not deprecated
    except (ValueError, DeprecationWarning):
        parts = np.zeros(0, np.int64)
    if parts.size != 2 * len(raw) or (parts < 0).any() or (parts[0::2] > _MS_MAX).any():
        raise LogError(f"malformed stream entry ids among {raw[:3]!r}...")
    ms, seq = parts[0::2], parts[1::2]
    if (seq > _SEQ_MASK).any():
        bad = raw[int(np.argmax(seq > _SEQ_MASK))].decode()
        raise LogError(f"stream entry id {bad} has a sequence beyond 2^{_SEQ_BITS}")
    offsets: list[int] = ((ms << _SEQ_BITS) | seq).tolist()
    return offsets


def _positions(positions: Mapping[int, int]) -> list[str]:
    """The commit script's arguments: partition, offset, partition, offset, ..."""
    return [str(x) for p, o in positions.items() for x in (p, o)]


def _raw_reply(response: Any, **_: Any) -> Any:
    return response


def _stream_entries(reply: Any) -> Sequence[Any]:
    """The entries of a one-stream XREADGROUP reply: a map under RESP3, a list of
    [key, entries] pairs under RESP2, None when there is nothing new."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]  # type: ignore[no-any-return]


def _field(fields: Sequence[bytes], name: bytes) -> bytes:
    """A field's value in an entry's flat [field, value, ...] list."""
    if fields[0] == name:
        return fields[1]
    return fields[fields.index(name) + 1]


def entry_id(offset: int) -> str:
    return f"{offset >> _SEQ_BITS}-{offset & _SEQ_MASK}"


class RedisStreamsLog:
    """EventLog on Redis Streams, `partitions` streams."""

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 4,
        prefix: str = "tm:log",
        retention_s: float = 7 * 86400.0,
        lease_s: float = 5.0,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = partitions
        self.prefix = prefix
        self.retention_s = retention_s
        self.lease_s = lease_s
        self.url = url
        # No retries inside redis-py: a read retried after a timeout loses the first read's
        # entries from sight (the server delivered them) and an append retried after one
        # may write twice. A failure is raised; the caller decides (`maybe_written`).
        self.client: Any = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        # Stream entries as the server sends them ([id, [field, value]]): redis-py's callbacks
        # would build a dict per entry, which costs more than decoding the whole batch.
        for command in ("XRANGE", "XREADGROUP", "XAUTOCLAIM"):
            self.client.set_response_callback(command, _raw_reply)
        self._commit = self.client.register_script(_COMMIT)
        self._rebalance = self.client.register_script(_REBALANCE)
        self._release = self.client.register_script(_RELEASE)
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder(list[Event]).decode
        self._trimmed_at = 0.0
        self._lock = threading.Lock()

    def key(self, partition: int) -> str:
        return f"{self.prefix}:p{partition}"

    def _committed_key(self, group: str) -> str:
        return f"{self.prefix}:committed:{group}"

    def append(self, events: Sequence[Event]) -> None:
        """One MULTI/EXEC: all of `events` or none. Sent and read on a connection of its own
        so that where it failed is known: before EXEC was sent whole nothing was written;
        once it was, a lost reply (a timeout, a reset) may hide a transaction the server
        ran (`LogError.maybe_written`)."""
        if not events:
            return
        n = self.partitions
        encode = self._encode
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        commands += [
            ("XADD", self.key(partition_of(e.user_id, n)), "*", "e", encode(e)) for e in events
        ]
        now = time.monotonic()
        with self._lock:
            trim = now - self._trimmed_at >= _TRIM_EVERY_S
            if trim:
                self._trimmed_at = now
        if trim and self.retention_s > 0:
            min_id = int((time.time() - self.retention_s) * 1000)
            commands += [("XTRIM", self.key(p), "MINID", "~", min_id) for p in range(n)]
        commands.append(("EXEC",))
        try:
            sent = SentCommands(self.client.connection_pool)
            sent.send(*commands)
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot append: {exc}") from exc
        try:
            replies = sent.replies()
        except redis.RedisError as exc:
            raise LogError(
                f"event log {self.url}: cannot append: no answer ({exc}); "
                "the events may have been written",
                maybe_written=True,
            ) from exc
        done = replies[-1]
        if isinstance(done, redis.ResponseError):  # EXECABORT: nothing was run
            refused = next((r for r in replies if isinstance(r, redis.ResponseError)), done)
            raise LogError(f"event log {self.url}: cannot append: {refused}")
        if not isinstance(done, list) or any(isinstance(r, Exception) for r in done):
            raise LogError(
                f"event log {self.url}: cannot append: the transaction failed part way "
                f"({done!r:.200}); some events may have been written",
                maybe_written=True,
            )

    def records(self, partition: int, entries: Sequence[Any]) -> list[LogRecord]:
        """Log records of XRANGE / XREADGROUP / XAUTOCLAIM entries (deleted ones skipped):
        the payloads framed as one msgpack array, decoded in one call."""
        live = [e for e in entries if e is not None and e[1]]
        if not live:
            return []
        payloads = [_field(e[1], b"e") for e in live]
        events = self._decode(b"\xdd" + len(live).to_bytes(4, "big") + b"".join(payloads))
        offsets = offsets_of([e[0] for e in live])
        return [
            LogRecord(offset, event, partition)
            for offset, event in zip(offsets, events, strict=True)
        ]

    def read(self, partition: int, after: int, limit: int) -> list[LogRecord]:
        start = "-" if after <= 0 else "(" + entry_id(after)
        try:
            entries = self.client.xrange(self.key(partition), start, "+", count=limit)
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot read: {exc}") from exc
        return self.records(partition, entries)

    def commit(self, group: str, positions: Mapping[int, int]) -> None:
        if not positions:
            return
        try:
            self.queue_commit(self.client, group, positions)
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot commit: {exc}") from exc

    def queue_commit(self, client: Any, group: str, positions: Mapping[int, int]) -> None:
        """Run (on a client) or queue (on a pipeline) the script that raises the group's
        committed offsets to `positions`."""
        self._commit(keys=[self._committed_key(group)], args=_positions(positions), client=client)

    def commit_command(self, group: str, positions: Mapping[int, int]) -> tuple[Any, ...]:
        """The same script call as a raw command (EVALSHA: the script must be loaded)."""
        return ("EVALSHA", self._commit.sha, 1, self._committed_key(group), *_positions(positions))

    def committed(self, group: str) -> dict[int, int]:
        try:
            stored = self.client.hgetall(self._committed_key(group))
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot read offsets: {exc}") from exc
        out = dict.fromkeys(range(self.partitions), 0)
        out.update({int(p): int(o) for p, o in stored.items() if int(p) < self.partitions})
        return out

    def end_offsets(self) -> dict[int, int]:
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xrevrange(self.key(p), "+", "-", count=1)
        try:
            newest = pipe.execute()
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot read: {exc}") from exc
        return {p: offset_of(e[0][0]) if e else 0 for p, e in enumerate(newest)}

    def lag(self, group: str, cap: int = 100_000) -> dict[int, int]:
        """Per partition: entries after the group's committed offset. Counted by the server
        (XINFO GROUPS: not yet delivered + delivered and not acknowledged) where it can tell
        (Redis >= 7, Valkey), else by reading ids after the committed offset, up to `cap`."""
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.xinfo_groups(self.key(p))
        try:
            infos = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot read lag: {exc}") from exc
        out: dict[int, int] = {}
        committed: dict[int, int] | None = None
        for p, info in enumerate(infos):
            mine = [] if isinstance(info, Exception) else [g for g in info if _name(g) == group]
            if mine and mine[0].get("lag") is not None:
                out[p] = int(mine[0]["lag"]) + int(mine[0]["pending"])
                continue
            if committed is None:
                committed = self.committed(group)
            start = "-" if committed[p] <= 0 else "(" + entry_id(committed[p])
            try:
                out[p] = len(self.client.xrange(self.key(p), start, "+", count=cap))
            except redis.RedisError as exc:
                raise LogError(f"event log {self.url}: cannot read lag: {exc}") from exc
        return out

    def consumer(self, group: str, member: str) -> RedisStreamsConsumer:
        return RedisStreamsConsumer(self, group, member)

    def close(self) -> None:
        self.client.close()

    def erase_users(self, user_ids: Collection[str], page: int = 10_000) -> list[str]:
        """Scans the partitions of the users (XRANGE, `page` entries at a time) and XDELs
        their entries. Entries a consumer read and did not acknowledge stay in its pending
        list as ids without data, which XAUTOCLAIM hands over as deleted (skipped)."""
        users = set(user_ids)
        erased: list[str] = []
        try:
            for p in sorted({partition_of(u, self.partitions) for u in users}):
                start = "-"
                while entries := self.client.xrange(self.key(p), start, "+", count=page):
                    doomed = [
                        (entry_id(r.offset), r.event.event_id)
                        for r in self.records(p, entries)
                        if r.event.user_id in users and r.event.type is not EventType.ERASE
                    ]
                    if doomed:
                        self.client.xdel(self.key(p), *(i for i, _ in doomed))
                        erased.extend(e for _, e in doomed)
                    if len(entries) < page:
                        break
                    last = entries[-1][0]
                    start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        except redis.RedisError as exc:
            raise LogError(f"event log {self.url}: cannot erase users: {exc}") from exc
        return erased


def _name(group_info: Mapping[str, Any]) -> str:
    name = group_info["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


class RedisStreamsConsumer:
    """A member of a consumer group: owns the partitions its leases name, reads them with
    XREADGROUP, takes over a partition's pending messages with XAUTOCLAIM."""

    def __init__(self, log: RedisStreamsLog, group: str, member: str) -> None:
        self.log = log
        self.group = group
        self.member = member
        self._lease_prefix = f"{log.prefix}:lease:{group}:"
        self._members_key = f"{log.prefix}:members:{group}"
        self._owned: frozenset[int] = frozenset()
        self._claiming: dict[int, str] = {}  # partition -> XAUTOCLAIM cursor
        # Per partition, the offset of the last entry handed out since it was taken over,
        # claimed back or sought: this member's pending entries after it are unknown to it.
        self._after: dict[int, int] = {}
        # Per partition, the reads delivered and not yet acknowledged, in order: (last
        # offset, offsets, entry ids as read) each.
        self._delivered: dict[int, deque[tuple[int, list[int], list[bytes]]]] = defaultdict(deque)
        # The commit sent last, its replies not read yet, with its partition and offset; see
        # `commit`.
        self._acking: tuple[SentCommands, int, int] | None = None
        self._renew_at = 0.0
        self._next = 0
        for p in range(log.partitions):
            try:
                log.client.xgroup_create(log.key(p), group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise LogError(f"event log {log.url}: cannot create group: {exc}") from exc
            except redis.RedisError as exc:
                raise LogError(f"event log {log.url}: cannot create group: {exc}") from exc

    def assignment(self) -> frozenset[int]:
        now = time.monotonic()
        if now < self._renew_at:
            return self._owned
        log = self.log
        try:
            owned, live = log._rebalance(
                keys=[self._members_key],
                args=[self.member, int(log.lease_s * 1000), log.partitions, self._lease_prefix],
            )
        except redis.RedisError as exc:
            # Cannot renew: the leases may lapse, so stop reading rather than risk two owners.
            self._owned = frozenset()
            raise LogError(f"event log {log.url}: cannot renew leases: {exc}") from exc
        # Renew well before the lease ends: a fifth of it.
        self._renew_at = now + log.lease_s / 5
        new = frozenset(int(p) for p in owned)
        for p in new - self._owned:
            # Taken over (or first owned since this process started): the messages its
            # previous reader was delivered and never acknowledged come first.
            self._claiming[p] = "0-0"
            self._delivered.pop(p, None)
            self._after.pop(p, None)
        for p in self._owned - new:
            self._claiming.pop(p, None)
            self._delivered.pop(p, None)
            self._after.pop(p, None)
        if new - self._owned:
            self._forget_dead({m.decode() if isinstance(m, bytes) else m for m in live}, new)
        self._owned = new
        return new

    def _forget_dead(self, live: set[str], partitions: frozenset[int]) -> None:
        """Remove group consumers that are not live and hold nothing pending."""
        log = self.log
        for p in partitions:
            try:
                for c in log.client.xinfo_consumers(log.key(p), self.group):
                    name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                    if name not in live and int(c["pending"]) == 0:
                        log.client.xgroup_delconsumer(log.key(p), self.group, name)
            except redis.RedisError:
                return  # housekeeping only; the next takeover tries again

    def poll(self, limit: int) -> list[LogRecord]:
        self._settle()
        owned = sorted(self._owned) if limit > 0 else []
        log = self.log
        for i in range(len(owned)):
            p = owned[(self._next + i) % len(owned)]
            try:
                entries = self._read(p, limit)
            except redis.RedisError as exc:
                raise LogError(f"event log {log.url}: cannot read partition {p}: {exc}") from exc
            read = [e for e in entries if e is not None]
            if read:  # deleted (trimmed) entries included: they are behind too
                self._after[p] = max(self._after.get(p, 0), offset_of(read[-1][0]))
            records = log.records(p, entries)
            if records:
                self._next = (owned.index(p) + 1) % len(owned)
                # The entries' offsets and ids as read (acknowledged as is), deleted ones
                # included: they stay pending on the member until acknowledged.
                ids = [e[0] for e in read]
                same = len(ids) == len(records)
                offsets = [r.offset for r in records] if same else offsets_of(ids)
                self._delivered[p].append((offsets[-1], offsets, ids))
                return records
        return []

    def _read(self, p: int, limit: int) -> Sequence[Any]:
        """The next entries of partition `p`: while taking it over, the group's pending
        entries (XAUTOCLAIM, from its cursor: a claim whose reply was lost is claimed again);
        then this member's own pending entries after the last it handed out, before new ones.
        Those are entries a read delivered whose reply never arrived (a timeout while the
        server hung, a reset connection): the server counts them as this member's, and a
        later read's records, applied, would move the stored position past them. Both reads
        go in one round trip; new entries the second delivers while the first returned some
        are this member's own pending entries at the next call."""
        log = self.log
        key = log.key(p)
        if p in self._claiming:
            reply = log.client.xautoclaim(
                key, self.group, self.member, 0, self._claiming[p], count=limit
            )
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if cursor == "0-0":
                del self._claiming[p]
            else:
                self._claiming[p] = cursor
            if reply[1] or p in self._claiming:
                return reply[1]  # type: ignore[no-any-return]
        pipe = log.client.pipeline(transaction=False)
        pipe.xreadgroup(
            self.group, self.member, {key: entry_id(self._after.get(p, 0))}, count=limit
        )
        pipe.xreadgroup(self.group, self.member, {key: ">"}, count=limit)
        mine, new = pipe.execute()
        return _stream_entries(mine) or _stream_entries(new)

    def commit(self, partition: int, offset: int) -> None:
        """XACK the records delivered up to `offset` and raise the group's committed offset.
        Both are sent at once and their replies read by this consumer's next call (`poll`,
        `commit`, `seek`, `close`), which raises if they failed: the stream processor's
        position lives in the store, so the log's commit only serves lag and takeovers, and
        is not worth a round trip's wait a batch. Lag read in between may count the batch
        once more."""
        self._settle()
        done = self._delivered[partition]
        ids: list[bytes] = []
        while done and done[0][1][0] <= offset:
            last, offsets, read = done[0]
            if last <= offset:  # the usual commit: whole reads
                ids.extend(read)
                done.popleft()
                continue
            cut = bisect.bisect_right(offsets, offset)
            ids.extend(read[:cut])
            done[0] = (last, offsets[cut:], read[cut:])
            break
        log = self.log
        commands: list[tuple[Any, ...]] = []
        if ids:
            commands.append(("XACK", log.key(partition), self.group, *ids))
        commands.append(log.commit_command(self.group, {partition: offset}))
        try:
            sent = SentCommands(log.client.connection_pool)
            sent.send(*commands)
        except redis.RedisError as exc:
            raise LogError(f"event log {log.url}: cannot acknowledge: {exc}") from exc
        self._acking = (sent, partition, offset)

    def _settle(self) -> None:
        """Read the replies of the commit sent last, if any. A commit script the server lost
        (a restart) is run again, loaded."""
        pending, self._acking = self._acking, None
        if pending is None:
            return
        sent, partition, offset = pending
        log = self.log
        try:
            replies = sent.replies()
        except redis.RedisError as exc:
            raise LogError(f"event log {log.url}: cannot acknowledge: {exc}") from exc
        failed = [r for r in replies if isinstance(r, redis.ResponseError)]
        if failed and all(isinstance(e, NoScriptError) for e in failed):
            log.commit(self.group, {partition: offset})
        elif failed:
            raise LogError(f"event log {log.url}: cannot acknowledge: {failed[0]}")

    def seek(self, partition: int, offset: int) -> None:
        # The records read since are pending on this member: claim them back, in order.
        del offset
        with contextlib.suppress(LogError):  # what it acknowledged is claimed again anyway
            self._settle()
        if partition in self._owned:
            self._claiming[partition] = "0-0"
            self._delivered.pop(partition, None)
            self._after.pop(partition, None)

    def close(self) -> None:
        log = self.log
        with contextlib.suppress(LogError):  # unacknowledged records are claimed again
            self._settle()
        with contextlib.suppress(redis.RedisError):  # else the leases lapse by themselves
            log._release(
                keys=[self._members_key],
                args=[self.member, log.partitions, self._lease_prefix],
            )
        self._owned = frozenset()
