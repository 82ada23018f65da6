"""The projection runner: catch a projection up from the log, follow JetStream, rebuild from zero.

A projection's tables and its checkpoint are written in one transaction, so a
crash never leaves a view ahead of or behind its position; a redelivered event
is either already in the log (skipped by `eventlog.append`) or at or below the
checkpoint (skipped here).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from libs.contracts.codec import decode_events
from libs.contracts.events import Event, event_type
from libs.kit import eventlog
from libs.kit.eventlog import Positioned

log = structlog.get_logger()


class Projection(Protocol):
    """A view derived only from events."""

    name: str
    event_types: frozenset[str]
    tables: tuple[str, ...]

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        """Fold a batch of events (all of this projection's types, in order) into the view."""


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


def _mine(projection: Projection, batch: Sequence[Positioned], after: int) -> list[Positioned]:
    return [(p, e) for p, e in batch if p > after and event_type(e) in projection.event_types]


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


async def rebuild(
    pool: asyncpg.Pool, projection: Projection, progress: Progress | None = None, chunk: int = 20_000,
) -> tuple[int, float]:
    """Drop the projection's view and replay it from position 0; return (events, seconds)."""
    started = time.perf_counter()
    applied = 0
    async with pool.acquire() as conn, conn.transaction():
        await lock_checkpoint(conn, projection.name)
        upto = await eventlog.head(conn)
        total = await conn.fetchval(
            "SELECT count(*) FROM events WHERE type = ANY($1) AND position <= $2",
            list(projection.event_types), upto,
        )
        for table in projection.tables:
            await conn.execute(f"TRUNCATE {table}")
        if progress:
            progress(0, total)
        async for batch in eventlog.read_all(conn, 0, projection.event_types, chunk, upto):
            await projection.apply(conn, batch)
            applied += len(batch)
            if progress:
                progress(applied, total)
        await _set_checkpoint(conn, projection.name, upto)
    return applied, time.perf_counter() - started


class Follower:
    """Consume a JetStream stream through a shared durable consumer into the log and projections.

    Acknowledges only after the transaction commits; when PostgreSQL is down it
    stops acknowledging (JetStream keeps the messages) and retries with backoff.
    """

    def __init__(
        self, nc: NATS, pool: asyncpg.Pool, stream: str, durable: str,
        projections: Sequence[Projection], batch: int = 1000, linger_s: float = 0.05,
        on_commit: Callable[[list[Positioned]], None] | None = None,
    ) -> None:
        self.linger_s = linger_s
        self.nc, self.pool, self.stream, self.durable = nc, pool, stream, durable
        self.projections = list(projections)
        self.batch = batch
        self.on_commit = on_commit
        self.committed = 0

    async def run(self) -> None:
        """Catch up from the log, then follow the stream until cancelled."""
        for projection in self.projections:
            await catch_up(self.pool, projection)
        js = self.nc.jetstream(timeout=10)
        config = ConsumerConfig(
            durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
            ack_wait=30, max_ack_pending=max(20_000, self.batch * 4),
        )
        sub = await js.pull_subscribe_bind(self.durable, self.stream) if await _exists(js, self.stream, self.durable) \
            else await js.pull_subscribe("", durable=self.durable, stream=self.stream, config=config)
        backoff_s = 0.2
        while True:
            try:
                msgs = await self._gather(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — NATS hiccup: retry
                log.warning("follower.fetch_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(backoff_s)
                continue
            if not msgs:
                continue
            while True:
                try:
                    await self.ingest(msgs)
                    backoff_s = 0.2
                    break
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
                    log.warning("follower.commit_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)

    async def _gather(self, sub: object) -> list[Msg]:
        """Fetch up to `batch` messages, waiting at most `linger_s` past the first for more to arrive:
        one transaction per batch, not per message."""
        msgs: list[Msg] = []
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(msgs) < self.batch:
            wait_s = 1.0 if deadline is None else deadline - loop.time()
            if wait_s <= 0:
                break
            try:
                got = await sub.fetch(self.batch - len(msgs), timeout=max(wait_s, 0.001))  # type: ignore[attr-defined]
            except (NatsTimeout, asyncio.TimeoutError):
                break
            msgs.extend(got)
            if deadline is None:
                deadline = loop.time() + self.linger_s
        return msgs

    async def ingest(self, msgs: list[Msg]) -> list[Positioned]:
        """Append one fetched batch and advance the projections in one transaction, then ack."""
        events: list[Event] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                events.extend(decode_events(msg.data))
                good.append(msg)
            except Exception:  # noqa: BLE001 — a poison message must not block the stream
                log.error("follower.undecodable", subject=msg.subject, size=len(msg.data))
                await msg.term()
        async with self.pool.acquire() as conn, conn.transaction():
            appended = await eventlog.append(conn, events)
            for projection in self.projections:
                await advance(conn, projection, appended)
        for msg in good:
            await msg.ack()
        self.committed += len(appended)
        if self.on_commit and appended:
            self.on_commit(appended)
        return appended


async def _exists(js: object, stream: str, durable: str) -> bool:
    try:
        await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
        return True
    except Exception:  # noqa: BLE001
        return False
