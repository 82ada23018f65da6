"""A writer of events: commands decided one at a time against a fold of the log, appended, then published.

    outbox = Outbox(pool, nc, name="registry.outbox", stream="REGISTRY", types=REGISTRY_TYPES,
                    apply=catalog.apply, lock=COMMAND_LOCK)
    await outbox.start()                      # fold the log, repair the stream, publish what is pending
    reply = await outbox.record(decide)       # decide() -> (reply, events), under the lock, then published
    await outbox.follow_retries()             # take retries of what the fold set aside, live; until cancelled

Events are committed to the log first and published afterwards from the log, past a checkpoint
(`projection_checkpoints`, row `name`), in log order, each with its event id as `Nats-Msg-Id`, so a
crash in between only delays them and JetStream drops a second copy. A stream that holds fewer of
these events than the log (NATS lost its data) gets all of them again. What the fold sets aside is
taken again when `switchyard events dead-letters --retry` asks, by every replica that set it aside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode, stored_types
from switchyard_gateway.contracts.deadletters import LOG_SOURCE, EventRetryRequested
from switchyard_gateway.contracts.events import Event, subject_of
from switchyard_gateway.events.deadletter import DeadLetters
from switchyard_gateway.events.logfold import LogFold
from switchyard_gateway.events.project import lock_checkpoint, set_checkpoint
from switchyard_gateway.events.retries import follow_retries
from switchyard_gateway.kit import eventlog

R = TypeVar("R")
log = structlog.get_logger()


class Outbox:
    """The one writer of some event types: `fold` holds them in memory, `record` appends and publishes."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, name: str, stream: str, types: Iterable[str],
                 apply: Callable[[Event], object], lock: int) -> None:
        self.pool, self.nc = pool, nc
        self.name, self.stream, self.lock = name, stream, lock
        self.fold = LogFold(types, apply, name=name, letters=DeadLetters(nc, name))
        self._publishing = asyncio.Lock()

    @property
    def types(self) -> frozenset[str]:
        return self.fold.types

    async def start(self) -> None:
        """Fold every event of these types in the log; republish all if the stream lost any; publish the rest.
        Retries asked before now are not this fold's: it reads every event again here."""
        info = await self.nc.jetstream(timeout=5).stream_info(subjects.STREAM_DEADLETTER)
        self.fold.retried.advance(info.state.last_seq)
        async with self.pool.acquire() as conn:
            await self.fold.catch_up(conn)
        await self.repair()
        await self.publish()

    async def follow_retries(self) -> None:
        """Take each retry asked of this outbox's fold, live, once (`LogFold.retake`); until cancelled."""

        async def take(asked: EventRetryRequested, sequence: int) -> None:
            outcome = "not from the log"
            if asked.source == LOG_SOURCE:
                async with self.pool.acquire() as conn:
                    outcome = await self.fold.retake(conn, asked.sequence, f"retry{sequence}")
            self.fold.retried.advance(sequence)
            log.info("outbox.retried", outbox=self.name, dead_letter=asked.dead_letter, position=asked.sequence,
                     retry=sequence, outcome=outcome)

        async def last_taken() -> int:
            return self.fold.retried.value

        await follow_retries(self.nc, self.name, take, last_taken)

    async def catch_up(self) -> int:
        """Fold what other replicas recorded since; return the position."""
        async with self.pool.acquire() as conn:
            return await self.fold.catch_up(conn)

    async def record(self, decide: Callable[[], tuple[R, Sequence[Event]]]) -> R:
        """Run `decide` under the lock against the fold brought up to date, append the events it returns,
        fold them in, and publish them once committed. `decide` may raise to refuse (nothing is recorded)."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self.lock)
                await self.fold.catch_up(conn)
                result, events = decide()
                appended = await eventlog.append(conn, events) if events else []
            for position, event in appended:
                self.fold.fold(position, event)
        if appended:
            await self.publish()
        return result

    async def publish(self) -> int:
        """Publish the events past the outbox checkpoint, in log order; return how many."""
        async with self._publishing, self.pool.acquire() as conn, conn.transaction():
            after = await lock_checkpoint(conn, self.name)
            js = self.nc.jetstream(timeout=5)
            last, published = after, 0
            async for batch in eventlog.read_all(conn, after, self.types):
                for position, event in batch:
                    await js.publish(subject_of(event), encode(event),
                                     headers={subjects.MSG_ID_HEADER: str(event.event_id)})
                    last, published = position, published + 1
            if last > after:
                await set_checkpoint(conn, self.name, last)
            return published

    async def repair(self) -> bool:
        """If the stream holds fewer of these events than the log, start publishing over from position 0."""
        info = await self.nc.jetstream(timeout=5).stream_info(self.stream)
        async with self.pool.acquire() as conn:
            in_log = await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1)", stored_types(self.types))
            if info.state.messages >= in_log:
                return False
            log.warning("outbox.stream_behind_log", outbox=self.name, stream=self.stream,
                        in_stream=info.state.messages, in_log=in_log)
            async with conn.transaction():
                await lock_checkpoint(conn, self.name)
                await set_checkpoint(conn, self.name, 0)
        return True
