"""The projection runner: catch a projection up from the log, follow JetStream, rebuild from zero.

A projection's tables and its checkpoint are written in one transaction, so a
crash never leaves a view ahead of or behind its position; a redelivered event
is either already in the log (skipped by `eventlog.append`) or at or below the
checkpoint (skipped here).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Gauge, Histogram

from switchyard_gateway.contracts.codec import SUPERSEDED, decode_event, decode_events, stored_types
from switchyard_gateway.contracts.events import Event, event_type
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.eventlog import Positioned

log = structlog.get_logger()

CONSUMER_PENDING = Gauge("switchyard_consumer_pending_messages",
                         "Messages of a stream the durable consumer has not been delivered yet (lag)",
                         ["stream", "consumer"])
CONSUMER_ACK_PENDING = Gauge("switchyard_consumer_ack_pending_messages",
                             "Messages delivered to the durable consumer and not yet acknowledged",
                             ["stream", "consumer"])
COMMITTED = Counter("switchyard_follower_events_total", "Events appended to the log by a follower", ["stream"])
COMMIT_SECONDS = Histogram("switchyard_follower_commit_seconds", "One follower transaction: append, project, commit",
                           ["stream"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class Projection(Protocol):
    """A view derived only from events."""

    name: str
    event_types: frozenset[str]
    tables: tuple[str, ...]

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        """Fold a batch of events (all of this projection's types, in order) into the view."""


class Fold(Protocol):
    """An in-memory accumulator of one projection's changes, written in one go."""

    def add(self, batch: Sequence[Positioned]) -> None: ...

    def size(self) -> int:
        """Rows the next write would touch (a rebuild writes early when this grows large)."""

    async def write(self, conn: asyncpg.Connection, fresh: bool) -> None:
        """Write the changes folded since the last write. `fresh`: the tables are empty and nothing has
        been written since they were emptied, so rows may be copied in rather than merged."""


@runtime_checkable
class Folding(Protocol):
    """A projection that can fold many batches in memory before writing (the rebuild's fast path)."""

    async def open(self, conn: asyncpg.Connection) -> Fold: ...


async def lock_checkpoint(conn: asyncpg.Connection, name: str) -> int:
    """The projection's position, row-locked until the caller's transaction ends."""
    await conn.execute(
        "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING", name
    )
    return await conn.fetchval(
        "SELECT position FROM projection_checkpoints WHERE projection = $1 FOR UPDATE", name
    )


async def _set_checkpoint(conn: asyncpg.Connection, name: str, position: int) -> None:
    await conn.execute(
        "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
        name, position,
    )


async def checkpoints(conn: asyncpg.Connection) -> dict[str, int]:
    """Every projection's position."""
    rows = await conn.fetch("SELECT projection, position FROM projection_checkpoints")
    return {r["projection"]: r["position"] for r in rows}


def _mine(projection: Projection, batch: Sequence[Positioned], after: int) -> Sequence[Positioned]:
    """The events of `batch` this projection takes (the batch itself when it takes them all)."""
    types = projection.event_types
    if batch and batch[0][0] > after and {event_type(e) for e in {type(e): e for _, e in batch}.values()} <= types:
        return batch
    return [(p, e) for p, e in batch if p > after and event_type(e) in types]


async def advance(conn: asyncpg.Connection, projection: Projection, new: Sequence[Positioned]) -> int:
    """Inside the caller's transaction, bring the projection up to date through `new`.

    `new` are events this transaction just appended; anything between the
    checkpoint and them is read from the log first.
    """
    position = await lock_checkpoint(conn, projection.name)
    if not new:
        return position
    first, last = new[0][0], new[-1][0]
    if position < first - 1:
        async for chunk in eventlog.read_all(conn, position, projection.event_types, upto=first - 1):
            await projection.apply(conn, chunk)
    todo = _mine(projection, new, position)
    if todo:
        await projection.apply(conn, todo)
    if last > position:
        await _set_checkpoint(conn, projection.name, last)
    return max(position, last)


async def catch_up(pool: asyncpg.Pool, projection: Projection, chunk: int = 10_000) -> int:
    """Apply everything in the log past the checkpoint; return the new position."""
    async with pool.acquire() as conn, conn.transaction():
        position = await lock_checkpoint(conn, projection.name)
        upto = await eventlog.head(conn)
        async for batch in eventlog.read_all(conn, position, projection.event_types, chunk, upto):
            await projection.apply(conn, batch)
        if upto > position:
            await _set_checkpoint(conn, projection.name, upto)
        return max(upto, position)


Progress = Callable[[int, int], None]   # (events applied so far, events to apply)
Decoders = Mapping[str, Callable[[Any], Any]]   # event type -> payload decoder (a rebuild may read a narrow view)
FLUSH_ROWS = 500_000   # a rebuild writes a projection's folded rows early once it holds this many


async def rebuild(
    pool: asyncpg.Pool, projection: Projection, progress: Progress | None = None, chunk: int = 20_000,
    decoders: Decoders | None = None,
) -> tuple[int, float]:
    """Drop the projection's view and replay it from position 0; return (events, seconds)."""
    return await rebuild_all(pool, [projection], progress, chunk, decoders)


async def rebuild_all(
    pool: asyncpg.Pool, projections: Sequence[Projection], progress: Progress | None = None,
    chunk: int = 20_000, decoders: Decoders | None = None,
) -> tuple[int, float]:
    """Drop several projections and replay them from position 0 in one pass over the log and one
    transaction; return (events read, seconds).

    The log is read on a second connection while the first folds (positions up to the head are all
    committed, so both see the same events). Projections that can fold in memory (`Folding`) write
    once at the end; others apply chunk by chunk.
    """
    started = time.perf_counter()
    applied = 0
    types = frozenset().union(*(p.event_types for p in projections))
    async with pool.acquire() as conn, conn.transaction():
        for projection in projections:
            await lock_checkpoint(conn, projection.name)
        upto = await eventlog.head(conn)
        total = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = ANY($1) AND position <= $2", stored_types(types), upto)
        for projection in projections:
            for table in projection.tables:
                await conn.execute(f"TRUNCATE {table}")
        folds = [await p.open(conn) if isinstance(p, Folding) else None for p in projections]
        fresh = [True] * len(projections)
        if progress:
            progress(0, total)
        with _gc_paused():
            async for batch, kinds in _read_decoded(pool, types, upto, chunk, decoders or {}):
                present = set(kinds)
                for i, projection in enumerate(projections):
                    if present <= projection.event_types:
                        mine = batch
                    elif present & projection.event_types:      # a mixed chunk: `kinds` has one type per event
                        mine = [pair for pair, kind in zip(batch, kinds) if kind in projection.event_types]
                    else:
                        continue
                    fold = folds[i]
                    if fold is None:
                        await projection.apply(conn, mine)
                        continue
                    fold.add(mine)
                    if fold.size() >= FLUSH_ROWS:
                        await fold.write(conn, fresh[i])
                        fresh[i] = False
                applied += len(batch)
                if progress:
                    progress(applied, total)
        for i, fold in enumerate(folds):
            if fold is not None:
                await fold.write(conn, fresh[i])
        for projection in projections:
            await _set_checkpoint(conn, projection.name, upto)
    return applied, time.perf_counter() - started


async def _read_decoded(
    pool: asyncpg.Pool, types: frozenset[str], upto: int, chunk: int, decoders: Decoders,
) -> AsyncIterator[tuple[list[Positioned], Sequence[str]]]:
    """Decoded chunks of the log up to `upto` with each event's type (a decoder may return a view that
    does not know its own), the next chunk's query running while the caller folds."""
    async with pool.acquire() as reader:
        after = 0
        pending = asyncio.ensure_future(eventlog.read_rows(reader, after, types, upto, chunk))
        try:
            while True:
                rows = await pending
                if not rows:
                    return
                after = rows[-1][0]
                pending = asyncio.ensure_future(eventlog.read_rows(reader, after, types, upto, chunk))
                await asyncio.sleep(0)          # let the next query go out before decoding this chunk
                yield _decode_rows(rows, decoders)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


def _decode_rows(rows: list[asyncpg.Record], decoders: Decoders) -> tuple[list[Positioned], Sequence[str]]:
    """Each row decoded, and its type as the current version names it (an older version is read upcast)."""
    kinds = {row[1] for row in rows}
    if len(kinds) == 1:                       # the common case: one decoder, one type for the whole chunk
        (only,) = kinds
        decode = decoders.get(only, decode_event)
        return [(row[0], decode(row[2])) for row in rows], (SUPERSEDED.get(only, only),)
    return ([(row[0], decoders.get(row[1], decode_event)(row[2])) for row in rows],
            [SUPERSEDED.get(row[1], row[1]) for row in rows])


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """A rebuild allocates millions of short-lived objects and no cycles: skip the cyclic collector meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


Decoded = tuple[list[Msg], eventlog.Prepared]
# How long JetStream waits for an ack before redelivering: messages a crashed replica held come back after
# this. A live replica whose commit takes longer keeps its messages with `in_progress`.
ACK_WAIT_S = 10.0
FETCH_AT_ONCE = 100          # messages asked for per pull, so that the byte bound is checked as they come


class Follower:
    """Consume a JetStream stream through a shared durable consumer into the log and projections.

    Acknowledges only after the transaction commits; when PostgreSQL is down it
    stops acknowledging (JetStream keeps the messages) and retries with backoff.
    The next batch is fetched and decoded while the current one commits.
    """

    def __init__(
        self, nc: NATS, pool: asyncpg.Pool, stream: str, durable: str,
        projections: Sequence[Projection], batch: int = 1000, linger_s: float = 0.05,
        on_commit: Callable[[list[Positioned]], None] | None = None, lag_interval_s: float = 5.0,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.linger_s, self.max_bytes = linger_s, max_bytes
        self.nc, self.pool, self.stream, self.durable = nc, pool, stream, durable
        self.projections = list(projections)
        self.batch = batch
        self.on_commit = on_commit
        self.lag_interval_s = lag_interval_s
        self.committed = 0
        self.pending: int | None = None      # the consumer's num_pending at the last look

    async def run(self) -> None:
        """Catch up from the log, then follow the stream until cancelled."""
        for projection in self.projections:
            await catch_up(self.pool, projection)
        js = self.nc.jetstream(timeout=10)
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S, max_ack_pending=max(20_000, self.batch * 4),
        )
        sub = await js.pull_subscribe_bind(self.durable, self.stream) if await _exists(js, self.stream, self.durable) \
            else await js.pull_subscribe("", durable=self.durable, stream=self.stream, config=config)
        fetched: asyncio.Queue[Decoded] = asyncio.Queue(maxsize=1)
        helpers = [asyncio.ensure_future(self._fetch_loop(sub, fetched)),
                   asyncio.ensure_future(self._watch_lag(js))]
        try:
            while True:
                msgs, batch = await fetched.get()
                await self._commit_until_done(msgs, batch)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            # Messages fetched but not committed stay unacknowledged (JetStream redelivers them); without
            # the subscription, a drain of the connection does not wait for anyone to read them.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch_loop(self, sub: object, out: asyncio.Queue[Decoded]) -> None:
        while True:
            try:
                msgs = await self._gather(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — NATS hiccup: retry
                log.warning("follower.fetch_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(0.2)
                continue
            if msgs:
                await out.put(await self._decode(msgs))

    async def _commit_until_done(self, msgs: list[Msg], batch: eventlog.Prepared) -> None:
        """Commit a batch, retrying with backoff; while it takes long (PostgreSQL down, a rebuild holding the
        checkpoints) its messages are marked in progress so that JetStream does not redeliver them."""
        attempt = asyncio.ensure_future(self._commit_retrying(msgs, batch))
        try:
            while True:
                done, _ = await asyncio.wait([attempt], timeout=ACK_WAIT_S / 2)
                if done:
                    attempt.result()
                    return
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
        finally:
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(BaseException):
                    await attempt

    async def _commit_retrying(self, msgs: list[Msg], batch: eventlog.Prepared) -> None:
        backoff_s = 0.2
        while True:
            try:
                await self._commit(msgs, batch)
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
                log.warning("follower.commit_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _gather(self, sub: object) -> list[Msg]:
        """Fetch up to `batch` messages and `max_bytes` of them, waiting at most `linger_s` past the first
        for more to arrive: one transaction per batch, not per message, and never an unbounded one when a
        backlog of full messages is waiting."""
        msgs: list[Msg] = []
        size = 0
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(msgs) < self.batch and size < self.max_bytes:
            wait_s = 1.0 if deadline is None else deadline - loop.time()
            if wait_s <= 0:
                break
            try:
                got = await sub.fetch(min(self.batch - len(msgs), FETCH_AT_ONCE),  # type: ignore[attr-defined]
                                      timeout=max(wait_s, 0.001))
            except (NatsTimeout, asyncio.TimeoutError):
                break
            msgs.extend(got)
            size += sum(len(msg.data) for msg in got)
            if deadline is None:
                deadline = loop.time() + self.linger_s
        return msgs

    async def _decode(self, msgs: list[Msg]) -> Decoded:
        """Decode a fetched batch and prepare its append (the per-event work), while the last one commits."""
        events: list[Event] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                events.extend(decode_events(msg.data))
                good.append(msg)
            except Exception:  # noqa: BLE001 — a poison message must not block the stream
                log.error("follower.undecodable", subject=msg.subject, size=len(msg.data))
                await msg.term()
        return good, eventlog.Prepared(events)

    async def ingest(self, msgs: list[Msg]) -> list[Positioned]:
        """Append one fetched batch and advance the projections in one transaction, then ack."""
        good, batch = await self._decode(msgs)
        return await self._commit(good, batch)

    async def _commit(self, msgs: list[Msg], batch: eventlog.Prepared) -> list[Positioned]:
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            appended = await eventlog.append(conn, batch)
            for projection in self.projections:
                await advance(conn, projection, appended)
        for msg in msgs:
            await msg.ack()
        COMMIT_SECONDS.labels(self.stream).observe(time.perf_counter() - started)
        COMMITTED.labels(self.stream).inc(len(appended))
        self.committed += len(appended)
        if self.on_commit and appended:
            self.on_commit(appended)
        return appended

    async def _watch_lag(self, js: object) -> None:
        """Publish the consumer's lag (messages not yet delivered, and delivered but unacknowledged)."""
        pending = CONSUMER_PENDING.labels(self.stream, self.durable)
        ack_pending = CONSUMER_ACK_PENDING.labels(self.stream, self.durable)
        while True:
            try:
                info = await js.consumer_info(self.stream, self.durable)  # type: ignore[attr-defined]
                self.pending = info.num_pending
                pending.set(info.num_pending)
                ack_pending.set(info.num_ack_pending)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — NATS away: keep the last figures
                pass
            await asyncio.sleep(self.lag_interval_s)


async def _exists(js: object, stream: str, durable: str) -> bool:
    try:
        await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
        return True
    except Exception:  # noqa: BLE001
        return False
