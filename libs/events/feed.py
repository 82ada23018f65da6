"""The log's live feed: every event appended to the log, published on the LOG stream in log order with its positions.

    feed = LogFeed(pool, nc, notices)        # woken by each commit's NOTIFY, idle otherwise
    await feed.run()

Events of one type and tenant at consecutive positions go in one message on `log.<type>.<tenant>` (a JSON array
of the events as stored, joined by PostgreSQL), its positions in the `Switchyard-Log-Positions: <first>-<last>`
header: every position from first to last is in it, in order (a position the log skipped ends a message). Each message is
published with `Nats-Expected-Last-Sequence`, so JetStream stores it only right after the one before it: a
message lost on the way makes every later one of the round refused, and the stream never holds positions out
of order. That is what lets a replay hand a subscriber over to the stream at a sequence: every message stored
before it holds positions the replay already read.

Where the feed stands is the stream's own last message (its positions header); the checkpoint `log.feed` in
`projection_checkpoints` is kept beside it for a stream that aged out empty, and is row-locked while a round
publishes, so metering replicas feed one at a time. A feed that starts on a log with no checkpoint starts at
the log's head: history is served by replay, the stream is for going live.

A row too large for one NATS message with its headers (`natsio.message_size` over the server's `max_payload`: the
limit was lowered after it was recorded) is withheld: its message carries an `EventWithheld` instead of the row, on
the same subject with the same headers, so the stream still holds every position in order and the rows after it go
out; it is counted (`switchyard_log_withheld_total{via="feed"}`) and logged (`feed.withheld_oversized`, never the
payload). Only a lone row can be too large: a run that is goes event by event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventWithheld
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.notices import LogNotices
from switchyard_gateway.events.project import lock_checkpoint, set_checkpoint
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.natsio import HEADROOM
from switchyard_gateway.kit.retry import Backoff, honour_cancel

log = structlog.get_logger()

FEED = "log.feed"                 # the checkpoint row; it exists once a feed has started
CHUNK = 5000                      # events read and published per round
RUN_EVENTS = 500                  # events per message at most
WITHHELD = Counter("switchyard_log_withheld_total",
                   "Rows of the log sent as an event.withheld.v1 marker, too large for one NATS message: once per row "
                   "by the LOG feed, once per page that held one by replay", ["via"])


class Message(NamedTuple):
    """One LOG message: its subject and body, the positions it holds, and the type and tenant of its events."""

    subject: str
    body: bytes
    first: int
    last: int
    kind: str
    tenant: str | None


def messages_of(runs: Sequence[asyncpg.Record], max_bytes: int) -> list[Message]:
    """Runs of the log as messages; a run too large for one message goes event by event (each its own message)."""
    out: list[Message] = []
    for first, last, kind, tenant, body in runs:
        subject, data = subjects.log_subject(kind, tenant), body.encode()
        if len(data) <= max_bytes or first == last:
            out.append(Message(subject, data, first, last, kind, tenant))
            continue
        for offset, item in enumerate(msgspec.json.decode(data, type=list[msgspec.Raw])):
            out.append(Message(subject, b"[" + bytes(item) + b"]", first + offset, first + offset, kind, tenant))
    return out


def positions_of(headers: dict[str, str] | None) -> tuple[int, int] | None:
    """(first, last) from a LOG message's positions header; None without one."""
    value = (headers or {}).get(subjects.POSITIONS_HEADER)
    if not value:
        return None
    first, _, last = value.partition("-")
    return int(first), int(last)


class LogFeed:
    """Publish the log on `stream` past what it already holds, whenever a commit is heard."""

    def __init__(self, pool: asyncpg.Pool, nc: NATS, notices: LogNotices | None = None, *,
                 stream: str = subjects.STREAM_LOG, chunk: int = CHUNK, name: str = FEED) -> None:
        self.pool, self.nc, self.notices = pool, nc, notices
        self.stream, self.chunk, self.name = stream, chunk, name
        self.position = Watermark()       # the last log position the stream is known to hold
        self.published = 0                # events this feed published
        self._tail: tuple[int, int] | None = None   # (sequence, position) of the stream's last message, as left here
        # one JetStream context for the feed's life: each context subscribes its own inbox for the acks of
        # `publish_async` and never lets go of it, so a context per round leaked a subscription per round
        self._js = nc.jetstream(timeout=10)

    async def run(self) -> None:
        """Feed until cancelled: a round per commit heard, retried with backoff while NATS or PostgreSQL is away."""
        assert self.notices is not None, "a feed that runs needs the log's notices"
        backoff = Backoff()
        seen, pending = self.notices.commits.value, True
        while True:
            honour_cancel()
            if not pending:
                await self.notices.commits.beyond(seen)
            seen, pending = self.notices.commits.value, True
            try:
                while await self.publish():
                    honour_cancel()
                pending = False
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — the feed must outlive any outage; it starts over from the stream
                log.warning("feed.failed", stream=self.stream, error=str(exc) or type(exc).__name__,
                            retry_in_s=backoff.next_s)
                self._tail = None
                await backoff.wait()

    async def publish(self) -> int:
        """One round: publish up to `chunk` events past what the stream holds; return how many."""
        js = self._js
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO projection_checkpoints (projection, position) "
                               "SELECT $1, coalesce(max(position), 0) FROM events ON CONFLICT DO NOTHING", self.name)
            checkpoint = await lock_checkpoint(conn, self.name)
            sequence, after = await self._where(js, checkpoint)
            runs = await eventlog.read_runs(conn, after, self.chunk, RUN_EVENTS)
            if not runs:
                self.position.advance(after)
                return 0
            messages = messages_of(runs, self.nc.max_payload - HEADROOM)
            pending, withheld = [], []
            for number, message in enumerate(messages):
                headers = {subjects.POSITIONS_HEADER: f"{message.first}-{message.last}",
                           subjects.EXPECTED_LAST_SEQUENCE_HEADER: str(sequence + number)}
                body, size = message.body, natsio.message_size(message.body, headers)
                if size > self.nc.max_payload:
                    marker = await self._withheld(conn, message, size)
                    body = b"[" + encode(marker) + b"]"
                    withheld.append((number, marker))
                pending.append(await js.publish_async(message.subject, body, headers=headers))
            acks = await asyncio.gather(*pending, return_exceptions=True)
            failed = next((a for a in acks if isinstance(a, BaseException)), None)
            if failed is not None:
                self._tail = None          # what did reach the stream is read back from it next round
                raise failed
            last_position = runs[-1]["last"]
            await set_checkpoint(conn, self.name, last_position)
        for number, marker in withheld:
            WITHHELD.labels("feed").inc()
            log.warning("feed.withheld_oversized", stream=self.stream, position=marker.position, type=marker.event_type,
                        event_id=str(marker.event_id), tenant=marker.tenant, size_bytes=marker.size_bytes,
                        max_payload=marker.max_payload, sequence=acks[number].seq)  # type: ignore[union-attr]
        self._tail = (acks[-1].seq, last_position)  # type: ignore[union-attr]
        self.position.advance(last_position)
        count = sum(m[3] - m[2] + 1 for m in messages)
        self.published += count
        return count

    async def _withheld(self, conn: asyncpg.Connection, message: Message, size: int) -> EventWithheld:
        """The marker that goes out in place of a lone row whose message would be `size` bytes, over the limit."""
        event_id = UUID(await eventlog.event_id_at(conn, message.first))
        return EventWithheld(event_id=event_id, event_type=message.kind, position=message.first, size_bytes=size,
                             max_payload=self.nc.max_payload, withheld_by=self.name, tenant=message.tenant)

    async def _where(self, js: object, checkpoint: int) -> tuple[int, int]:
        """The stream's last sequence, and the last log position it holds (the checkpoint if it holds none)."""
        info = await js.stream_info(self.stream)  # type: ignore[attr-defined]
        last = info.state.last_seq
        if self._tail is not None and self._tail[0] == last:
            return last, max(self._tail[1], checkpoint)
        if not info.state.messages:
            return last, checkpoint
        held = positions_of((await js.get_msg(self.stream, last)).headers)  # type: ignore[attr-defined]
        return last, max(held[1] if held else 0, checkpoint)
