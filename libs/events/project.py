"""Projections: views derived only from the log, each moving its checkpoint together with its rows.

A PostgreSQL projection (`Projection`) writes its tables and its row of `projection_checkpoints` in
one transaction: `advance` inside the transaction that appended the events (the ingest), `catch_up`
from the log. A projection kept elsewhere (`Target`: the quota counters in Valkey) applies a batch and
moves its checkpoint atomically, and only from where it was (a compare-and-set, so two replicas never
apply one batch twice); `LogFollower` drives it by push, reading the log whenever a commit is heard.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import structlog

from switchyard_gateway.contracts.events import event_type
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.notices import LogNotices
from switchyard_gateway.kit.retry import TRANSIENT, Backoff
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.eventlog import Positioned

log = structlog.get_logger()


class Projection(Protocol):
    """A view in PostgreSQL derived only from events of `event_types`, in `tables`, checkpointed as `name`."""

    name: str
    event_types: frozenset[str]
    tables: tuple[str, ...]

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        """Fold a batch of events (all of this projection's types, in order) into the view."""


async def lock_checkpoint(conn: asyncpg.Connection, name: str) -> int:
    """A checkpoint's position, row-locked until the caller's transaction ends (created at 0 if new)."""
    await conn.execute("INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING", name)
    return await conn.fetchval("SELECT position FROM projection_checkpoints WHERE projection = $1 FOR UPDATE", name)


async def set_checkpoint(conn: asyncpg.Connection, name: str, position: int) -> None:
    """Move a checkpoint locked by `lock_checkpoint` in the same transaction."""
    await conn.execute("UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
                       name, position)


async def checkpoints(conn: asyncpg.Connection) -> dict[str, int]:
    """Every checkpoint's position."""
    rows = await conn.fetch("SELECT projection, position FROM projection_checkpoints")
    return {r["projection"]: r["position"] for r in rows}


def _mine(projection: Projection, batch: Sequence[Positioned], after: int) -> Sequence[Positioned]:
    """The events of `batch` this projection takes (the batch itself when it takes them all)."""
    types = projection.event_types
    if batch and batch[0][0] > after and {event_type(e) for e in {type(e): e for _, e in batch}.values()} <= types:
        return batch
    return [(p, e) for p, e in batch if p > after and event_type(e) in types]


async def advance(conn: asyncpg.Connection, projection: Projection, new: Sequence[Positioned]) -> int:
    """Inside the caller's transaction, bring the projection up to date through `new` (events this
    transaction just appended); anything between the checkpoint and them is read from the log first."""
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
        await set_checkpoint(conn, projection.name, last)
    return max(position, last)


async def catch_up(pool: asyncpg.Pool, projection: Projection, chunk: int = 10_000) -> int:
    """Apply everything the log holds past the checkpoint, in one transaction; return the new position."""
    async with pool.acquire() as conn, conn.transaction():
        position = await lock_checkpoint(conn, projection.name)
        upto = await eventlog.head(conn)
        async for batch in eventlog.read_all(conn, position, projection.event_types, chunk, upto):
            await projection.apply(conn, batch)
        if upto > position:
            await set_checkpoint(conn, projection.name, upto)
        return max(upto, position)


class Busy(Exception):
    """The target takes no events for now (a rebuild holds it): the follower tries again after a backoff."""


class Target(Protocol):
    """A projection kept outside PostgreSQL, with its checkpoint beside it."""

    event_types: frozenset[str]

    async def checkpoint(self) -> int:
        """The log position the projection holds."""

    async def apply(self, after: int, batch: Sequence[Positioned]) -> bool:
        """Apply `batch` (events past `after`, in order) and move the checkpoint from `after` to the batch's
        last position, atomically; False, changing nothing, if the checkpoint was not at `after`. Raises
        `Busy` when it takes nothing for now."""


class Lead(Protocol):
    """Which replica follows: one at a time, so the others do not read and fold for nothing."""

    async def hold(self) -> float:
        """Take or renew the lead: 0.0 if this replica leads now, else the seconds after which to ask again."""


class LogFollower:
    """Follow the log into a `Target` by push: on every commit heard (`LogNotices`), read past the checkpoint
    and apply in batches until none is left, then sleep until the next one. With a `Lead`, only its holder
    applies; a replica that does not lead asks again when the holder's lead may have lapsed, until it leads
    or the log holds nothing it has not applied. Trouble with the database or the target (`errors`) is retried
    with backoff; a refused compare-and-set (another replica, or a rebuild, moved the checkpoint) reloads it."""

    def __init__(self, pool: asyncpg.Pool, target: Target, notices: LogNotices | None = None, *,
                 lead: Lead | None = None, batch: int = 2000, renew_s: float = 1.0,
                 errors: tuple[type[BaseException], ...] = TRANSIENT) -> None:
        self.pool, self.target, self.notices, self.lead = pool, target, notices, lead
        self.batch, self.renew_s, self.errors = batch, renew_s, errors
        self.position = Watermark()          # the checkpoint as this replica last saw it
        self.applied = 0                      # events this replica applied
        self._at: int | None = None           # the checkpoint, if known to be current

    async def step(self) -> int:
        """Apply the next batch past the checkpoint; return how many events it held (0: nothing new, or refused)."""
        if self._at is None:
            self._at = await self.target.checkpoint()
            self.position.advance(self._at)
        after = self._at
        async with self.pool.acquire() as conn:
            batch = await eventlog.read(conn, after, self.batch, self.target.event_types)
        if not batch:
            return 0
        if not await self.target.apply(after, batch):
            self._at = None
            return 0
        self._at = batch[-1][0]
        self.position.advance(self._at)
        self.applied += len(batch)
        return len(batch)

    async def catch_up(self) -> bool:
        """Apply until the log holds nothing past the checkpoint; False if the lead was lost on the way."""
        renewed = time.monotonic()
        while True:
            if self.lead is not None and time.monotonic() - renewed > self.renew_s:
                if await self.lead.hold():
                    return False
                renewed = time.monotonic()
            applied = await self.step()
            if applied == 0 and self._at is not None:
                return True

    async def run(self) -> None:
        """Follow until cancelled."""
        assert self.notices is not None, "a follower that runs needs the log's notices"
        backoff, paused = Backoff(), Backoff(first_s=0.2, max_s=1.0)
        seen, pending = self.notices.commits.value, True
        while True:
            if not pending:
                await self.notices.commits.beyond(seen)
            seen, pending = self.notices.commits.value, True
            try:
                wait_s = await self.lead.hold() if self.lead is not None else 0.0
                if wait_s == 0.0 and await self.catch_up():
                    pending = False
                backoff.reset()
                paused.reset()
            except Busy as exc:
                log.info("events.follow_paused", reason=str(exc), retry_in_s=paused.next_s)
                self._at = None
                await paused.wait()
                continue
            except self.errors as exc:
                log.warning("events.follow_failed", error=str(exc) or type(exc).__name__, retry_in_s=backoff.next_s)
                self._at = None
                await backoff.wait()
                continue
            if pending:      # another replica leads: look again once its lead may have lapsed, or at a commit
                await self.notices.commits.beyond(seen, timeout_s=max(wait_s, 0.05))
