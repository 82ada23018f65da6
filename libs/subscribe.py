"""Follow Switchyard's event log from anywhere NATS reaches, each event applied once into your own PostgreSQL tables.

    async def apply(conn: asyncpg.Connection, batch: list[tuple[int, Event]]) -> None:
        ...                                    # write your tables; runs in the transaction that moves the position

    subscriber = Subscriber("tenant-spend", apply, nats_url="nats://...", database_url="postgresql://...",
                            types=["usage"])
    await subscriber.run()                     # catch up, then follow, until cancelled

From the position it last recorded (table `switchyard_subscriptions`, one row per subscriber name; 0 the first
time), a subscriber asks metering for the log page by page and applies each page in one transaction that also
records the page's last position; the next page is on its way meanwhile. The page that reaches the log's head names
a LOG stream sequence: from there the subscriber follows LOG live (metering makes the consumer, delivering to the
subscriber's inbox), skipping events at or below its position, so nothing is missed or applied twice across the
switch. Everything it asks goes through its door, `metering.subscriber.v1.<user>.<name>.<tenant, or _all>.<op>`
(`events.door`): the NATS user in `nats_url` (or `user`; none: the services' own) may publish there alone.
Whatever goes wrong live (a gap in the consumer's sequence, the server's heartbeats gone, the client reconnecting:
the consumer may have gone with a restarted server, more queued than `max_queued` messages because applying is
slower than the log grows) sends it back at once to catching up from its position: the log, not the stream, is what
it counts on. NATS or metering away is waited out; NATS refusing the user
(`NotAuthorized`: a wrong password, an unknown user, or every server refusing it on reconnecting once its password
changed while it ran) or its door (`NotPermitted`, as soon as NATS says so: a name or tenant its users file does not
give it) ends `run()` with that error, as asking again would change nothing.

An event that does not decode, or whose `apply` raises (anything but a lost connection), is set aside on
DEADLETTER under the subscriber's name and the rest of its batch is applied without it (each event of a failing
batch is tried alone in a savepoint); `switchyard_set_aside` notes it in the same transaction. `switchyard events
dead-letters --retry` sends it back: the subscriber follows its own retries on DEADLETTER and takes each noted
event once, recording the retry's sequence in the same transaction.

A row of the log too large for one NATS message (the server's `max_payload` lowered after it was recorded) reaches
`apply` as an `EventWithheld` in its place, in log order, with its position: the row's event id, type, tenant and
size, and who withheld it (`log.feed` live, `metering.replay.v1` in a page). Nothing is skipped unseen: an `apply`
that matches on event types passes it by; one that records it can read the row later with
`await subscriber.fetch(position)`, which answers the event once the limit carries it (the marker until then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import AnyEvent, decode_event
from switchyard_gateway.contracts.deadletters import LOG_SOURCE, EventRetryRequested, EventWithheld
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import LiveFrom, ReplayPage, ReplayRequest
from switchyard_gateway.events.deadletter import DeadLetters, poisonous
from switchyard_gateway.events.door import Door
from switchyard_gateway.events.feed import positions_of
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.retries import follow_retries
from switchyard_gateway.events.tail import StreamTail, TailLost
from switchyard_gateway.kit import eventlog, nats_auth, natsio
from switchyard_gateway.kit.natsio import NotAuthorized, NotPermitted, ServiceError, ServiceUnavailable
from switchyard_gateway.kit.retry import TRANSIENT, Backoff, honour_cancel, retry

__all__ = ["ASIDE", "Apply", "Event", "EventWithheld", "NotAuthorized", "NotPermitted", "Subscriber", "TABLE"]

log = structlog.get_logger()

Apply = Callable[[asyncpg.Connection, list[tuple[int, Event | EventWithheld]]], Awaitable[None]]
TABLE = "switchyard_subscriptions"         # a subscriber's position and the last retry it took
ASIDE = "switchyard_set_aside"              # the events it set aside, until a retry takes them

_page = msgspec.json.Decoder(ReplayPage)


class _FastPage(msgspec.Struct):
    events: list[AnyEvent]  # type: ignore[valid-type]


_fast_page = msgspec.json.Decoder(_FastPage)
_fast_events = msgspec.json.Decoder(list[AnyEvent])  # type: ignore[valid-type]
_raws = msgspec.json.Decoder(list[msgspec.Raw])
_withheld = msgspec.json.Decoder(EventWithheld)
Raw = msgspec.Raw
# log position, the event (its marker, or why it did not decode), bytes as sent
Item = tuple[int, Event | EventWithheld | BaseException, Raw]
# what a commit is retried through: PostgreSQL, NATS or metering (which stores dead letters) away
OUTAGES = (*TRANSIENT, nats.errors.Error, ServiceUnavailable)


def _marker(raw: Raw) -> EventWithheld | None:
    """The marker a row too large for one NATS message was sent as, if `raw` is one."""
    try:
        return _withheld.decode(raw)
    except msgspec.DecodeError:
        return None


class Subscriber:
    """One named subscriber: its position, its catch-up through replay, its live tail of LOG, its retries."""

    def __init__(
        self, name: str, apply: Apply, *, nats_url: str | None = None, database_url: str | None = None,
        nc: NATS | None = None, pool: asyncpg.Pool | None = None, types: Sequence[str] = (),
        tenant: str | None = None, start: int | datetime = 0, page_events: int = 2000, linger_s: float = 0.05,
        batch_events: int = 5000, max_queued: int = 10_000, request_timeout_s: float = 30.0,
        inbox_prefix: str | None = None, user: str | None = None,
    ) -> None:
        if nc is None and nats_url is None or pool is None and database_url is None:
            raise ValueError("a subscriber needs NATS (nc or nats_url) and PostgreSQL (pool or database_url)")
        self.name, self.apply = name, apply
        self.nats_url, self.database_url, self.nc, self.pool = nats_url, database_url, nc, pool
        self.types, self.tenant, self.start = list(types), tenant, start
        # type prefixes of whole tokens, as its requests' contract says (msgspec.ValidationError, a ValueError): refused
        # here, rather than by metering once it runs
        msgspec.convert({"types": self.types}, ReplayRequest)
        self.page_events, self.linger_s, self.batch_events = page_events, linger_s, batch_events
        self.max_queued, self.request_timeout_s = max_queued, request_timeout_s
        user = user or (urlsplit(nats_url.split(",")[0]).username if nats_url else None)
        # the permissions of libs/kit/nats_auth.py let a user read its own inbox only, and ask metering through
        # its own door; a subscriber given no user is the services' (a client of theirs, `nc`)
        self.user = user or nats_auth.SERVICES_USER
        self.inbox_prefix = inbox_prefix or (nats_auth.inbox_prefix(user) if user else None)
        self.position = Watermark()          # the last log position applied and recorded
        self.live = asyncio.Event()          # set while following LOG
        self.applied = 0                     # events this process applied
        self.switches = 0                    # times it went live
        self._owned: list[Any] = []
        self._door: Door | None = None

    @property
    def door(self) -> Door:
        """How this subscriber asks metering for pages, consumers and dead letters (its NATS user's door)."""
        if self._door is None or self._door.nc is not self.nc:
            self._door = Door(self.nc, user=self.user, name=self.name, tenant=self.tenant,  # type: ignore[arg-type]
                              timeout_s=self.request_timeout_s)
        return self._door

    async def run(self) -> None:
        """Catch up, follow live, and go back to catching up whenever live goes wrong; until cancelled, or until
        NATS refuses what asking again cannot mend (NotAuthorized, NotPermitted)."""
        await self._open()
        try:
            await natsio.unless_refused(self.nc, self._run())  # type: ignore[arg-type]
        finally:
            await self._close()

    async def _run(self) -> None:
        retries = asyncio.ensure_future(self._follow_retries())
        refused = Backoff(0.5, 10.0)            # going live refused again and again: not in a tight loop
        try:
            while True:
                honour_cancel()
                live = await self._catch_up()
                switches = self.switches
                try:
                    await self._follow(live)
                except TailLost as why:
                    log.info("subscriber.live_lost", subscriber=self.name, reason=str(why), position=self.position.value)
                finally:
                    self.live.clear()
                if self.switches == switches:
                    await refused.wait()
                else:
                    refused.reset()
        finally:
            retries.cancel()
            await asyncio.gather(retries, return_exceptions=True)

    # --- the position ------------------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.nc is None:
            self.nc = await natsio.connect(self.nats_url, f"subscriber:{self.name}",  # type: ignore[arg-type]
                                           inbox_prefix=self.inbox_prefix)
            self._owned.append(self.nc)
        if self.pool is None:
            self.pool = await eventlog.create_pool(self.database_url)  # type: ignore[arg-type]
            self._owned.append(self.pool)
        self.letters = DeadLetters(self.nc, self.name, door=self.door)
        async with self.pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY, position bigint NOT NULL,"
                               " retry_sequence bigint NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {ASIDE} (name text, position bigint, dead_letter bigint NOT NULL,"
                               " PRIMARY KEY (name, position))")
            await conn.execute(f"INSERT INTO {TABLE} (name, position) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               self.name, self.start if isinstance(self.start, int) else 0)
            self.position.advance(await conn.fetchval(f"SELECT position FROM {TABLE} WHERE name = $1", self.name))

    async def _close(self) -> None:
        for owned in reversed(self._owned):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(owned.close(), 5)

    async def _commit(self, batch: list[Item], through: int) -> None:
        """Apply the events past the recorded position and record `through`, in one transaction (retried while
        PostgreSQL or NATS, where dead letters go, is away)."""
        assert self.pool is not None

        async def attempt() -> list[Item]:
            async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[union-attr]
                held = await conn.fetchval(f"SELECT position FROM {TABLE} WHERE name = $1 FOR UPDATE", self.name)
                todo = [item for item in batch if item[0] > held]
                if todo:
                    await self._apply(conn, todo)
                if through > held:
                    await conn.execute(f"UPDATE {TABLE} SET position = $2, updated_at = now() WHERE name = $1",
                                       self.name, through)
                return todo

        todo = await retry(attempt, what="subscriber.commit_failed", errors=OUTAGES, subscriber=self.name)
        self.applied += len(todo)
        self.position.advance(through)
        for position, item, _ in todo:
            if isinstance(item, EventWithheld):
                log.warning("subscriber.withheld", subscriber=self.name, position=position, type=item.event_type,
                            event_id=str(item.event_id), size_bytes=item.size_bytes, max_payload=item.max_payload,
                            withheld_by=item.withheld_by)

    async def _apply(self, conn: asyncpg.Connection, todo: list[Item], key: str = "") -> list[Item]:
        """`apply` in a savepoint; if it fails for an event's sake, each event alone, setting aside those that fail
        (and those that did not decode). Returns what was set aside."""
        aside = [item for item in todo if isinstance(item[1], BaseException)]
        for item in aside:
            await self._set_aside(conn, item, "decode", item[1], key)  # type: ignore[arg-type]
        good = [item for item in todo if not isinstance(item[1], BaseException)] if aside else todo
        if not good:
            return aside
        try:
            async with conn.transaction():
                await self.apply(conn, [(position, event) for position, event, _ in good])  # type: ignore[misc]
            return aside
        except Exception as exc:
            if not poisonous(exc):
                raise
            if len(good) == 1:
                await self._set_aside(conn, good[0], "apply", exc, key)
                return aside + good
        for one in good:
            try:
                async with conn.transaction():
                    await self.apply(conn, [(one[0], one[1])])  # type: ignore[list-item]
            except Exception as exc:
                if not poisonous(exc):
                    raise
                await self._set_aside(conn, one, "apply", exc, key)
                aside.append(one)
        return aside

    async def _set_aside(self, conn: asyncpg.Connection, item: Item, stage: str, exc: BaseException,
                         key: str = "") -> None:
        """Put an event on DEADLETTER and note, in the transaction, that it waits for a retry. `key` tells apart
        setting it aside again on a retry from doing the same twice (a crash in between)."""
        position, event, raw = item
        subject = ""
        if isinstance(event, Event):
            subject = subjects.log_subject(event.__struct_config__.tag, event.tenant)
        elif isinstance(event, EventWithheld):
            subject = subjects.log_subject(event.event_type, event.tenant)
        letter = await self.letters.put(stage=stage, error=exc, source=LOG_SOURCE, subject=subject,  # type: ignore[arg-type]
                                        sequence=position, data=bytes(raw), key=key)
        await conn.execute(f"INSERT INTO {ASIDE} (name, position, dead_letter) VALUES ($1, $2, $3) ON CONFLICT "
                           "(name, position) DO UPDATE SET dead_letter = excluded.dead_letter", self.name, position, letter)

    def _decoded(self, positions: Sequence[int], raws: Sequence[Raw], fast: list[Event] | None) -> list[Item]:
        """Events with their positions and stored bytes; a row withheld as too large is its marker, and one that
        does not decode carries its error instead."""
        if fast is not None:
            return list(zip(positions, fast, raws))
        out: list[Item] = []
        for position, raw in zip(positions, raws):
            try:
                out.append((position, decode_event(raw), raw))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 — this event alone: set aside when committed
                out.append((position, _marker(raw) or exc, raw))
        return out

    # --- a row withheld, read again ----------------------------------------------------------------------------

    async def fetch(self, position: int) -> Event | EventWithheld | None:
        """The event at a log position, read through replay: for a row that came as an `EventWithheld`, the event
        once the NATS server's `max_payload` carries it, the marker again until then; None when the position holds
        nothing this subscriber reads (another tenant's, a type it did not ask for, a rolled-back position). Needs
        NATS: while the subscriber runs, or given `nc`. Replay's refusals raise `ServiceError` (a position past the
        log's head: 409 `AHEAD_OF_LOG`)."""
        if self.nc is None:
            raise RuntimeError("fetch needs NATS: call it while the subscriber runs, or give the subscriber nc")
        if position < 1:
            raise ValueError(f"a log position is 1 or more, not {position}")
        try:
            raw = await self._from_log(position)
        except ServiceError as exc:
            if exc.body.code != "AHEAD_OF_LOG":
                raise
            # the request asked for the events after position - 1: say what the caller asked for
            raise ServiceError(409, ErrorBody("AHEAD_OF_LOG", f"position {position} is beyond the log's head",
                                              "position")) from None
        if raw is None:
            return None
        [(_, event, _)] = self._decoded([position], [raw], None)
        if isinstance(event, BaseException):
            raise event
        return event

    async def _from_log(self, position: int) -> Raw | None:
        """The stored event at a log position, as a replay page carries it; None when the page has none there."""
        page = _page.decode(await self.door.replay(ReplayRequest(after=position - 1, types=self.types, max_events=1)))
        return page.events[0] if page.positions[:1] == [position] else None

    # --- catching up through replay ----------------------------------------------------------------------------

    async def _ask(self, after: int) -> tuple[ReplayPage, list[Event] | None]:
        """One page (retried while metering is not answering), with its events decoded at once when they all decode
        as this build's types."""
        start = {"since": self.start} if isinstance(self.start, datetime) and after == 0 else {"after": after}
        request = ReplayRequest(**start, types=self.types, max_events=self.page_events)

        async def attempt() -> bytes:
            return await self.door.replay(request)

        body = await retry(attempt, what="subscriber.replay_unanswered", errors=(ServiceUnavailable,),
                           backoff=Backoff(0.5, 5.0), subscriber=self.name)
        page = _page.decode(body)
        try:
            fast = _fast_page.decode(body).events
        except msgspec.ValidationError:
            fast = None
        return page, fast

    async def _catch_up(self) -> LiveFrom:
        """Apply pages from the position until one names where to go live; the next page is asked for while one is
        applied."""
        pending = asyncio.ensure_future(self._ask(self.position.value))
        idle = Backoff(0.2, 2.0)
        try:
            while True:
                honour_cancel()
                page, fast = await pending
                if page.live is None:
                    pending = asyncio.ensure_future(self._ask(page.last))
                await self._commit(self._decoded(page.positions, page.events, fast), page.last)
                if page.live is not None:
                    return page.live
                if not page.events and page.last == page.head:     # at the head, and no feed to go live on yet
                    await idle.wait()
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    # --- following LOG -----------------------------------------------------------------------------------------

    async def _follow(self, live: LiveFrom) -> None:
        """Apply what LOG delivers from `live.sequence`, in batches gathered for up to `linger_s`, until TailLost."""
        filters = live.subjects
        if self.tenant and len(filters) > 1:       # one filter, ending in the tenant, as its door allows
            filters = [f"{subjects.LOG_PREFIX}.*.*.*.{subjects.subject_token(self.tenant)}"]
        tail = StreamTail(self.nc, live.stream, filters, live.sequence, self.name, self.max_queued,  # type: ignore[arg-type]
                          door=self.door)
        try:
            await tail.start()
        except (ServiceError, nats.errors.Error) as exc:      # metering or NATS away, or the door refused
            await tail.stop()
            raise TailLost(f"could not follow {live.stream}: {exc}") from None
        through = self.position.value
        self.live.set()
        self.switches += 1
        log.info("subscriber.live", subscriber=self.name, position=self.position.value, sequence=live.sequence)
        try:
            while True:
                honour_cancel()
                batch: list[Item] = []
                for msg in await tail.take(self.batch_events, self.linger_s):
                    held = positions_of(msg.headers)
                    if held is None:
                        continue
                    raws = _raws.decode(msg.data)
                    if held[1] - held[0] + 1 != len(raws):
                        raise TailLost(f"a message for positions {held[0]}-{held[1]} holds {len(raws)} events")
                    through = held[1]
                    if not self._wanted(msg.subject):
                        continue
                    try:
                        fast = _fast_events.decode(msg.data)
                    except msgspec.ValidationError:
                        fast = None
                    batch += self._decoded(range(held[0], held[0] + len(raws)), raws, fast)
                if batch or through > self.position.value:
                    await self._commit(batch, max(through, self.position.value))
        finally:
            await tail.stop()

    def _wanted(self, subject: str) -> bool:
        """Whether a LOG message holds a type asked for (a tenant's one filter brings all of the tenant's types)."""
        kind = subject.split(".", 1)[1].rsplit(".", 1)[0]
        return not self.types or any(kind == t or kind.startswith(t + ".") for t in self.types)

    # --- retries ------------------------------------------------------------------------------------------------

    async def _follow_retries(self) -> None:
        """Apply each retry asked for this subscriber once, recording its DEADLETTER sequence with it."""
        assert self.pool is not None and self.nc is not None
        pool = self.pool

        async def last_taken() -> int:
            async with pool.acquire() as conn:
                return await conn.fetchval(f"SELECT retry_sequence FROM {TABLE} WHERE name = $1", self.name)

        await follow_retries(self.nc, self.name, self._retry, last_taken, max_queued=self.max_queued, door=self.door)

    async def _retry(self, asked: EventRetryRequested, sequence: int) -> None:
        """Take a set-aside event again, once: only while it is still noted as set aside (a second retry of one
        already taken changes nothing), recording the retry's sequence in the same transaction. The event is read
        again from the log, which holds it whole (a letter's data may have been cut to fit), else from the letter."""
        raw = await self._from_log(asked.sequence) if asked.sequence > 0 else None
        item = self._decoded([asked.sequence], [raw or Raw(asked.data)], None)

        async def attempt() -> str:
            async with self.pool.acquire() as conn, conn.transaction():  # type: ignore[union-attr]
                held = await conn.fetchval(f"SELECT retry_sequence FROM {TABLE} WHERE name = $1 FOR UPDATE", self.name)
                if sequence <= held:
                    return "done before"
                waiting = await conn.fetchval(f"DELETE FROM {ASIDE} WHERE name = $1 AND position = $2 RETURNING true",
                                              self.name, asked.sequence)
                outcome = "not set aside here"
                if waiting:
                    outcome = "set aside again" if await self._apply(conn, item, f"retry{sequence}") else "applied"
                await conn.execute(f"UPDATE {TABLE} SET retry_sequence = $2, updated_at = now() WHERE name = $1",
                                   self.name, sequence)
                return outcome

        outcome = await retry(attempt, what="subscriber.commit_failed", errors=OUTAGES, subscriber=self.name)
        log.info("subscriber.retried", subscriber=self.name, dead_letter=asked.dead_letter, position=asked.sequence,
                 outcome=outcome)
