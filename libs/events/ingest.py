"""Ingest: a stream consumed through a shared durable consumer into the log, and its projections advanced in
the same transaction.

`Ingest.run` catches the projections up from the log, then gathers messages for up to `linger_s`
past the first (at most `batch` messages and `max_bytes`), and in one transaction appends them
(`eventlog.append` skips events the log already holds) and advances every projection and its
checkpoint; only then are the messages acknowledged. The next batch is fetched and decoded while one
commits. When PostgreSQL is away it stops acknowledging (JetStream keeps the messages) and retries
with backoff, marking its messages in progress so that JetStream does not hand them to another replica.
An event that does not decode, or that the log or a projection refuses, is set aside on DEADLETTER (the
rest of its batch is committed without it) and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter, Gauge, Histogram

from switchyard_gateway.contracts.codec import decode_events, encode
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.events.deadletter import DeadLetters, Poison, events_of, poisonous
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.project import Projection, advance, catch_up
from switchyard_gateway.kit.retry import TRANSIENT, Backoff, honour_cancel, retry
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

Decoded = tuple[list[Msg], eventlog.Prepared]
# How long JetStream waits for an ack before redelivering: messages a crashed replica held come back after
# this. A live replica whose commit takes longer keeps its messages with `in_progress`.
ACK_WAIT_S = 10.0
FETCH_AT_ONCE = 100          # messages asked for per pull, so that the byte bound is checked as they come
IDLE_PULL_S = 5.0            # an idle consumer's pull request waits this long for a first message


class Ingest:
    """Consume `stream` through the durable consumer `durable` into the log and `projections`."""

    def __init__(
        self, nc: NATS, pool: asyncpg.Pool, stream: str, durable: str,
        projections: Sequence[Projection], batch: int = 1000, linger_s: float = 0.05,
        on_commit: Callable[[list[Positioned]], None] | None = None, max_bytes: int = 8 * 1024 * 1024,
        dead_letters: DeadLetters | None = None,
    ) -> None:
        self.nc, self.pool, self.stream, self.durable = nc, pool, stream, durable
        self.dead_letters = dead_letters or DeadLetters(nc, durable)
        self.projections = list(projections)
        self.batch, self.linger_s, self.max_bytes = batch, linger_s, max_bytes
        self.on_commit = on_commit
        self.committed = Watermark()         # events this replica appended (redeliveries not counted)
        self.position = Watermark()          # the log position of its last append
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
        fetching = asyncio.ensure_future(self._fetch_loop(sub, fetched))
        try:
            while True:
                msgs, batch = await fetched.get()
                await self._commit_until_done(msgs, batch)
        finally:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
            # Messages fetched but not committed stay unacknowledged (JetStream redelivers them); without
            # the subscription, a drain of the connection does not wait for anyone to read them.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _fetch_loop(self, sub: object, out: asyncio.Queue[Decoded]) -> None:
        backoff = Backoff(first_s=0.2, max_s=2.0)
        while True:
            try:
                msgs = await self._gather(sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — NATS away: try again
                honour_cancel()
                log.warning("ingest.fetch_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                await backoff.wait()
                continue
            backoff.reset()
            if msgs:
                await out.put(await self._decode(msgs))

    async def _commit_until_done(self, msgs: list[Msg], batch: eventlog.Prepared) -> None:
        """Commit a batch, retrying with backoff; while it takes long (PostgreSQL down, a rebuild holding the
        checkpoints) its messages are marked in progress so that JetStream does not redeliver them."""
        attempt = asyncio.ensure_future(retry(lambda: self._guarded(msgs, batch), what="ingest.commit_failed",
                                              errors=TRANSIENT, stream=self.stream))
        try:
            while True:
                done, _ = await asyncio.wait([attempt], timeout=ACK_WAIT_S / 2)
                if done:
                    if isinstance(attempt.exception(), Poison):
                        await self._isolate(msgs)
                        return
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

    async def _gather(self, sub: object) -> list[Msg]:
        """Fetch up to `batch` messages and `max_bytes` of them, waiting at most `linger_s` past the first
        for more to arrive: one transaction per batch, not per message, and never an unbounded one when a
        backlog of full messages is waiting. When nothing came within a linger, one pull for a single
        message waits up to `IDLE_PULL_S` (a pull for many would hold the first until it expired)."""
        msgs: list[Msg] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        idle = False
        while len(msgs) < self.batch and size < self.max_bytes:
            if idle:
                want, wait_s = 1, IDLE_PULL_S
            else:
                want, wait_s = min(self.batch - len(msgs), FETCH_AT_ONCE), deadline - loop.time()
                if wait_s <= 0:
                    break
            try:
                got = await sub.fetch(want, timeout=max(wait_s, 0.001))  # type: ignore[attr-defined]
            except (NatsTimeout, asyncio.TimeoutError):
                if msgs or idle:
                    break
                idle = True          # nothing within a linger: wait for one message, then linger again
                continue
            msgs.extend(got)
            size += sum(len(msg.data) for msg in got)
            if idle:
                idle, deadline = False, loop.time() + self.linger_s
        return msgs

    async def _decode(self, msgs: list[Msg]) -> Decoded:
        """Decode a fetched batch and prepare its append (the per-event work), while the last one commits. What does
        not decode is set aside on DEADLETTER; a message left with no event is done with."""
        events: list[Event] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                events.extend(decode_events(msg.data))
                good.append(msg)
            except Exception:  # noqa: BLE001 — a poison message must not block the stream
                kept = await events_of(msg.data, lambda data, exc, key, m=msg: self._set_aside(m, "decode", exc, data, key))
                if kept:
                    events.extend(kept)
                    good.append(msg)
                else:
                    await msg.term()
        return good, eventlog.Prepared(events)

    async def _set_aside(self, msg: Msg, stage: str, exc: BaseException, data: bytes, key: str = "") -> None:
        await self.dead_letters.put(stage=stage, error=exc, source=self.stream, subject=msg.subject,  # type: ignore[arg-type]
                                    sequence=_sequence(msg), data=data, headers=msg.headers, key=key)

    async def _guarded(self, msgs: list[Msg], batch: eventlog.Prepared) -> list[Positioned]:
        """A commit whose failure is the batch's own (bad data, a projection's bug) raises Poison, which no retry
        repeats; an outage raises as it is, and is retried."""
        try:
            return await self._commit(msgs, batch)
        except Exception as exc:
            if poisonous(exc):
                raise Poison(str(exc)) from exc
            raise

    async def _isolate(self, msgs: list[Msg]) -> None:
        """A batch failed for one of its events: commit message by message, and event by event in a message that
        fails, setting aside each event that fails alone."""
        for msg in msgs:
            events = await events_of(msg.data, None)
            try:
                await retry(lambda: self._guarded([msg], eventlog.Prepared(events)), what="ingest.commit_failed",
                            errors=TRANSIENT, stream=self.stream)
                continue
            except Poison:
                pass
            for event in events:
                try:
                    await retry(lambda: self._guarded([], eventlog.Prepared([event])), what="ingest.commit_failed",
                                errors=TRANSIENT, stream=self.stream)
                except Poison as exc:
                    await self._set_aside(msg, "apply", exc, encode(event), str(event.event_id))
            await msg.ack()

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
        if appended:
            self.position.advance(appended[-1][0])
            self.committed.advance(self.committed.value + len(appended))
            if self.on_commit:
                self.on_commit(appended)
        return appended

    async def refresh_lag(self) -> None:
        """Set the lag gauges from the consumer (messages not yet delivered, and delivered but unacknowledged):
        run before each scrape, so an idle service asks nothing in between."""
        info = await self.nc.jetstream(timeout=2).consumer_info(self.stream, self.durable)
        self.pending = info.num_pending
        CONSUMER_PENDING.labels(self.stream, self.durable).set(info.num_pending)
        CONSUMER_ACK_PENDING.labels(self.stream, self.durable).set(info.num_ack_pending)


def _sequence(msg: Msg) -> int:
    try:
        return msg.metadata.sequence.stream
    except Exception:  # noqa: BLE001 — not a JetStream delivery
        return 0


async def _exists(js: object, stream: str, durable: str) -> bool:
    try:
        await js.consumer_info(stream, durable)  # type: ignore[attr-defined]
        return True
    except Exception:  # noqa: BLE001
        return False
