"""A writer of events: commands decided one at a time against a fold of the log, appended, then published.

    outbox = Outbox(pool, nc, name="registry.outbox", stream="REGISTRY", types=REGISTRY_TYPES,
                    apply=catalog.apply, lock=COMMAND_LOCK)
    await outbox.start()                      # fold the log, repair the stream, publish what is pending
    reply = await outbox.record(decide)       # decide() -> (reply, events), under the lock, then published
    await outbox.follow_retries()             # take retries of what the fold set aside, live; until cancelled

Events are committed to the log first and published afterwards from the log, past a checkpoint
(`projection_checkpoints`, row `name`), in log order, each with its event id as `Nats-Msg-Id`, so a
crash in between only delays them and JetStream drops a second copy. A command recorded is recorded: when
JetStream cannot take its events (no quorum, say), `record` still answers with its result and publishing is
tried again in the background, with backoff, until it succeeds (it answered 503 "try again" for a change
already in force). A stream that holds fewer of
these events than the log (NATS lost its data) gets all of them again. What the fold sets aside is
taken again when `switchyard events dead-letters --retry` asks, by every replica that set it aside.

The outbox is a relay: each event goes out as the log stores it (fields a newer build added pass on; only an event
stored under an older version is encoded anew, upcast). A row this build cannot decode (a type or a value a newer
build wrote mid-upgrade, a damaged payload) is published all the same, as stored, in its place in log order, with
the event id of its row as `Nats-Msg-Id`, and logged (`outbox.published_undecodable`: position and type, never the
payload); rows of types this build does not know are this outbox's when they fall under its stream's subjects
(`provider.renamed.v1` on REGISTRY). Its subject is its type and `_` for the identifier, the one part of the
subject that needs the payload read (`_` is what subjects carry for no identifier): the stream captures it, so
followers that know the type take it in stream order, those that do not set it aside on DEADLETTER under their
own name (counted, retryable), and the stream holds every row the log does, which keeps `repair` true. Sending
it to DEADLETTER instead would keep it from the followers that can read it, and a stream short of the log would
be republished in full at every start. Nothing past a row is held back by it, and no row is passed over.

Every row is one NATS message, so none may be larger than the server's `max_payload` with its headers. `record`
refuses a command whose event would be larger than that less `natsio.HEADROOM` (the room the LOG feed and replay
pages need around one event): `EventTooLarge`, 413, nothing recorded. A row that is too large all the same (the
limit was lowered after it was recorded) is withheld: in its place, on the same `<type>._` with its event id as
`Nats-Msg-Id`, goes an `EventWithheld` naming its position, type and size, counted
(`switchyard_outbox_oversized_total`) and logged (`outbox.withheld_oversized`, never the payload); the row stays
in the log, and the rows after it go out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar
from uuid import UUID

import asyncpg
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from prometheus_client import Counter

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_event, encode, stored_types, understands
from switchyard_gateway.contracts.deadletters import LOG_SOURCE, EventRetryRequested, EventWithheld
from switchyard_gateway.contracts.events import Event, event_type, subject_of
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.events.deadletter import DeadLetters
from switchyard_gateway.events.logfold import LogFold
from switchyard_gateway.events.project import lock_checkpoint, set_checkpoint
from switchyard_gateway.events.retries import follow_retries
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.natsio import HEADROOM, ServiceError

R = TypeVar("R")
log = structlog.get_logger()
UNDECODABLE = Counter("switchyard_outbox_undecodable_total",
                      "Rows of the log an outbox published as stored because this build cannot decode them",
                      ["outbox"])
OVERSIZED = Counter("switchyard_outbox_oversized_total",
                    "Rows of the log an outbox withheld as larger than one NATS message, a marker in their place",
                    ["outbox"])
CHUNK = 10_000          # rows read at a time while publishing
# what keeps committed events from going out for now: JetStream or NATS away or without quorum, PostgreSQL away
PUBLISH_TROUBLE = (nats.errors.Error, TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
REPUBLISH_S = (0.5, 10.0)   # the background retry's first and longest wait


class EventTooLarge(ServiceError):
    """A command would record an event that leaves less than HEADROOM of one NATS message (413): nothing recorded."""

    def __init__(self, kind: str, size: int, max_payload: int) -> None:
        self.kind, self.size, self.max_payload = kind, size, max_payload
        self.limit = max_payload - HEADROOM
        super().__init__(413, ErrorBody("PAYLOAD_TOO_LARGE", (
            f"the {kind} event this change would record is {size} bytes, over the {self.limit} bytes an event may "
            f"take (the NATS server's max_payload of {max_payload} bytes, less {HEADROOM} for headers); "
            "nothing was recorded")))


class Outbox:
    """The one writer of some event types: `fold` holds them in memory, `record` appends and publishes."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, *, name: str, stream: str, types: Iterable[str],
                 apply: Callable[[Event], object], lock: int) -> None:
        self.pool, self.nc = pool, nc
        self.name, self.stream, self.lock = name, stream, lock
        # type prefixes the stream captures: a type under one of them that this build does not know is a newer one's
        self.families = tuple(f.removesuffix(">") for f in subjects.STREAMS.get(stream, ()) if f.endswith(".>"))
        self.fold = LogFold(types, apply, name=name, letters=DeadLetters(nc, name))
        self._publishing = asyncio.Lock()
        self._republishing: asyncio.Task[None] | None = None

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
                self._check_sizes(events)
                appended = await eventlog.append(conn, events) if events else []
            for position, event in appended:
                self.fold.fold(position, event)
        if appended:
            try:
                await self.publish()
            except PUBLISH_TROUBLE as exc:              # recorded all the same: published once it can be
                log.warning("outbox.publish_deferred", outbox=self.name, error=str(exc) or type(exc).__name__)
                self._republish()
        return result

    def _republish(self) -> None:
        """Publish what is pending in the background, with backoff, until it goes out (one such task at a time)."""
        if self._republishing is None or self._republishing.done():
            self._republishing = asyncio.create_task(self._publish_until_out())

    async def _publish_until_out(self) -> None:
        wait = REPUBLISH_S[0]
        while True:
            await asyncio.sleep(wait)
            try:
                published = await self.publish()
            except PUBLISH_TROUBLE as exc:
                wait = min(wait * 2, REPUBLISH_S[1])
                log.info("outbox.publish_retrying", outbox=self.name, in_s=wait,
                         error=str(exc) or type(exc).__name__)
                continue
            log.info("outbox.published_late", outbox=self.name, events=published)
            return

    async def publish(self) -> int:
        """Publish the events past the outbox checkpoint, in log order, each as stored; return how many."""
        async with self._publishing, self.pool.acquire() as conn, conn.transaction():
            after = await lock_checkpoint(conn, self.name)
            upto = await eventlog.head(conn)             # every row up to it is visible, so is its type below
            types = await self._stored_types(conn)
            js = self.nc.jetstream(timeout=5)
            last, published = after, 0
            while True:
                rows = await eventlog.read_rows(conn, last, types, upto, CHUNK)
                for position, kind, payload in rows:
                    await self._publish_row(conn, js, position, kind, payload)
                    last, published = position, published + 1
                if len(rows) < CHUNK:
                    break
            if last > after:
                await set_checkpoint(conn, self.name, last)
            return published

    async def _publish_row(self, conn: asyncpg.Connection, js: JetStreamContext, position: int, kind: str,
                           payload: str) -> None:
        """One row, as stored, with its event id as message id; a row too large for one message, withheld."""
        subject, body, msg_id, unread = await self._outgoing(conn, position, kind, payload)
        headers = {subjects.MSG_ID_HEADER: msg_id}
        size, limit = natsio.message_size(body, headers), self.nc.max_payload
        if size > limit:
            marker = EventWithheld(event_id=UUID(msg_id), event_type=kind, position=position, size_bytes=size,
                                   max_payload=limit, withheld_by=self.name)
            subject = undecoded_subject(kind)
            ack = await js.publish(subject, encode(marker), headers=headers)
            OVERSIZED.labels(self.name).inc()
            log.warning("outbox.withheld_oversized", outbox=self.name, position=position, type=kind, event_id=msg_id,
                        size_bytes=size, max_payload=limit, subject=subject, sequence=ack.seq, duplicate=ack.duplicate)
            return
        ack = await js.publish(subject, body, headers=headers)
        if unread is not None:
            UNDECODABLE.labels(self.name).inc()
            log.warning("outbox.published_undecodable", outbox=self.name, position=position, type=kind,
                        known_type=understands(kind), error=type(unread).__name__, subject=subject,
                        sequence=ack.seq, duplicate=ack.duplicate)

    def _check_sizes(self, events: Sequence[Event]) -> None:
        """Refuse (EventTooLarge) an event that, as stored, leaves less than HEADROOM of one NATS message."""
        max_payload = self.nc.max_payload
        for event in events:
            size = len(encode(event))
            if size > max_payload - HEADROOM:
                raise EventTooLarge(event_type(event), size, max_payload)

    async def repair(self) -> bool:
        """If the stream holds fewer of these events than the log, start publishing over from position 0."""
        info = await self.nc.jetstream(timeout=5).stream_info(self.stream)
        async with self.pool.acquire() as conn:
            in_log = await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1)",
                                         await self._stored_types(conn))
            if info.state.messages >= in_log:
                return False
            log.warning("outbox.stream_behind_log", outbox=self.name, stream=self.stream,
                        in_stream=info.state.messages, in_log=in_log)
            async with conn.transaction():
                await lock_checkpoint(conn, self.name)
                await set_checkpoint(conn, self.name, 0)
        return True

    async def _stored_types(self, conn: asyncpg.Connection) -> list[str]:
        """The types of the rows this outbox publishes: its own (older versions included) and each type in the log
        that this build does not know and that falls under the stream's subjects (a newer build's)."""
        newer = [kind for kind in await eventlog.types_stored(conn)
                 if kind.startswith(self.families) and not understands(kind)]
        return stored_types(self.types) + newer

    @staticmethod
    async def _outgoing(conn: asyncpg.Connection, position: int, kind: str,
                        payload: str) -> tuple[str, bytes, str, Exception | None]:
        """A stored event's subject, body and message id, and why this build cannot decode it (None if it can)."""
        try:
            event = decode_event(payload)
        except Exception as exc:  # noqa: BLE001 — not one this build reads: relayed as stored
            return undecoded_subject(kind), payload.encode(), await eventlog.event_id_at(conn, position), exc
        body = payload.encode() if event_type(event) == kind else encode(event)
        return subject_of(event), body, str(event.event_id), None


def undecoded_subject(kind: str) -> str:
    """The subject of an event this build cannot decode: its type (each token escaped), `_` for its identifier."""
    return subjects.subject_for(".".join(subjects.subject_token(token) for token in kind.split(".")), "")
