"""`metering.replay.v1`: pages of the event log for whoever NATS lets ask, and where to follow it live on LOG.

A page is read from PostgreSQL as stored (events are not decoded, only filtered by type prefix and tenant) and
answered on the request's reply subject, or published on the `deliver_to` subject it names. The caller asks for
the next page once it has this one (`after` = the page's `last`): pages are the flow control, so a slow caller
slows the replay down and no state is kept between pages, whichever metering replica answers each. A page that
reached the log's head carries `live`: the LOG stream sequence read just before the head, after which the feed
publishes every later position (a message at or after it may repeat positions the page held; the caller skips
those). The tenant is the subject's last token, so NATS permissions decide who may read which tenant's events.

A page fits one NATS message whatever its rows: each row is counted with its position against the server's
`max_payload` less the page's own fields. A row whose page would not fit even alone (the limit was lowered after it
was recorded) goes as an `EventWithheld` in its place, with its position, counted
(`switchyard_log_withheld_total{via="replay"}`) and logged (`replay.withheld_oversized`, never the payload).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec
import structlog
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import SUPERSEDED, decoder, encode
from switchyard_gateway.contracts.deadletters import EventWithheld
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import TYPE_PREFIX as TYPE_PREFIX_PATTERN
from switchyard_gateway.contracts.metering import LiveFrom, ReplayPage, ReplayRequest
from switchyard_gateway.events.feed import FEED, WITHHELD
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.natsio import ServiceError

log = structlog.get_logger()

SCAN = 200_000               # positions one page looks through at most, so that a sparse filter still answers promptly
SUBJECTS = (subjects.METERING_REPLAY, f"{subjects.METERING_REPLAY}.*")
TYPE_PREFIX = re.compile(TYPE_PREFIX_PATTERN)     # the request's contract: decoding refuses others (400 `types`)
DELIVER_TO = re.compile(r"^(_INBOX[A-Za-z0-9_-]*|replay)(\.[A-Za-z0-9_-]+)+\Z")

PAGES = Counter("switchyard_replay_pages_total", "Pages of the event log answered on metering.replay.v1", ["scope"])
EVENTS = Counter("switchyard_replay_events_total", "Events sent in pages of the event log", ["scope"])

_request = decoder(ReplayRequest)


@dataclass(frozen=True)
class History:
    """What a replay page is read with: the pool, and NATS for the LOG stream's sequence."""

    pool: asyncpg.Pool
    nc: NATS
    feeding: bool = True         # this metering feeds LOG; without a feed no page says where to go live


async def on_replay(history: History, data: bytes, subject: str, reply: str = "") -> bytes | None:
    """Answer one page, or publish it where the request says and answer nothing."""
    return await answer(history, data, tenant_of(subject), reply)


async def answer(history: History, data: bytes, tenant: str | None, reply: str,
                 inbox: str | None = None) -> bytes | None:
    """One page of `tenant`'s events (every tenant's: None) for the request `data`, answered or delivered (under
    `inbox`, when given: the asker's own)."""
    ask = _request.decode(data)            # the bounds its fields declare are checked here: a 400 naming the field
    problem = _problem(ask, reply)
    if not problem and inbox and ask.deliver_to is not None and not named_subject_ok(ask.deliver_to, inbox):
        problem = "deliver_to", f"deliver_to must be a subject under your inbox, {inbox}"
    if problem:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", problem[1], problem[0]))
    page = await read_page(history, msgspec.structs.replace(ask, types=covering(ask.types)), tenant)
    scope = "tenant" if tenant else "all"
    PAGES.labels(scope).inc()
    EVENTS.labels(scope).inc(len(page.events))
    body = encode(page)
    if ask.deliver_to:
        await history.nc.publish(ask.deliver_to, body)
        return None
    return body


def tenant_of(subject: str) -> str | None:
    """The tenant a replay subject is scoped to: its token after `metering.replay.v1`, else None (every tenant)."""
    rest = subject[len(subjects.METERING_REPLAY):].lstrip(".")
    return unescaped(rest) if rest else None


def unescaped(token: str) -> str:
    """An identifier from its subject token (`subjects.subject_token` undone)."""
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), token)


def _problem(ask: ReplayRequest, reply: str = "") -> tuple[str, str] | None:
    if ask.after is not msgspec.UNSET and ask.since is not None:
        return "after", "give after (a log position) or since (a time), not both"
    bad = [t for t in ask.types if not TYPE_PREFIX.match(t)]
    if bad:
        return "types", f"not a type prefix of whole tokens: {bad[0]!r} (usage, tenant.created, usage.recorded.v2)"
    if ask.deliver_to is not None and not named_subject_ok(ask.deliver_to):
        return "deliver_to", "deliver_to must be a subject under _INBOX or replay., without wildcards"
    if ask.deliver_to is not None and ask.deliver_to.startswith("_INBOX") and \
            ask.deliver_to.split(".", 1)[0] != reply.split(".", 1)[0]:
        # metering publishes as the services: an inbox named here must be the asker's own (its reply's prefix),
        # or one subscriber could have pages sent into another's inbox, or the services' own
        return "deliver_to", "deliver_to under an inbox must be under the asker's own (its reply subject's prefix)"
    return None


def covering(prefixes: list[str]) -> list[str]:
    """The type prefixes asked for, each once and none that another covers (`usage` covers `usage.recorded.v2`):
    the page's filters and `live.subjects` then never overlap, and the door's `follow` takes what a page hands out."""
    return [p for i, p in enumerate(prefixes)
            if p not in prefixes[:i] and not any(q != p and _within(p, q) for q in prefixes)]


def named_subject_ok(subject: str, under: str = "") -> bool:
    """Whether metering may publish on a subject an asker named: under an inbox (its own, `under`) or `replay.`,
    no wildcards (its length the request's contract bounds: `metering.MAX_SUBJECT_CHARS`)."""
    return subject.startswith(under) and DELIVER_TO.match(subject) is not None


def like_patterns(prefixes: list[str]) -> list[str] | None:
    """LIKE patterns for events of these type prefixes (whole tokens), and of the older versions read as them."""
    if not prefixes:
        return None
    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    patterns = [p for prefix in prefixes for p in (escaped(prefix), escaped(prefix) + ".%")]
    patterns += [escaped(old) for old, new in SUPERSEDED.items() if any(_within(new, p) for p in prefixes)]
    return patterns


def _within(kind: str, prefix: str) -> bool:
    return kind == prefix or kind.startswith(prefix + ".")


def live_subjects(prefixes: list[str], tenant: str | None) -> list[str]:
    """The LOG filter subjects that hold these types (of this tenant): `log.<type, wildcards to three tokens>.<tenant>`."""
    last = subjects.subject_token(tenant) if tenant else "*"
    if not prefixes:
        return [f"{subjects.LOG_PREFIX}.>"] if tenant is None else [f"{subjects.LOG_PREFIX}.*.*.*.{last}"]
    return list(dict.fromkeys(f"{subjects.LOG_PREFIX}.{p}{'.*' * (2 - p.count('.'))}.{last}" for p in prefixes))


async def read_page(history: History, ask: ReplayRequest, tenant: str | None) -> ReplayPage:
    """The events past `ask.after` (or from `ask.since`) that match, within the bounds and one NATS message, a row
    too large for any page as an EventWithheld; `live` once at the head."""
    js = history.nc.jetstream(timeout=5)
    limit = history.nc.max_payload
    async with history.pool.acquire() as conn:
        feeding = history.feeding and await conn.fetchval(
            "SELECT true FROM projection_checkpoints WHERE projection = $1", FEED)
        # read before the head: every message the stream holds now holds positions at or below it
        sequence = (await js.stream_info(subjects.STREAM_LOG)).state.last_seq if feeding else None
        head = await eventlog.head(conn)
        after = await _start_of(conn, ask.since, head) if ask.since is not None else ask.after or 0
        if after > head:
            raise ServiceError(409, ErrorBody("AHEAD_OF_LOG", f"after {after} is beyond the log's head {head}", "after"))
        upto = min(head, after + SCAN)
        rows = await eventlog.read_stored(conn, after, upto, ask.max_events, like=like_patterns(ask.types),
                                          tenant=tenant)
        live = LiveFrom(subjects.STREAM_LOG, sequence + 1, live_subjects(ask.types, tenant)) \
            if sequence is not None else None
        events, positions, withheld = await _fill(conn, rows, ask.max_bytes, limit, head, live)
    for marker in withheld:
        WITHHELD.labels("replay").inc()
        log.warning("replay.withheld_oversized", position=marker.position, type=marker.event_type,
                    event_id=str(marker.event_id), tenant=marker.tenant, size_bytes=marker.size_bytes,
                    max_payload=limit)
    whole = len(events) == len(rows) < ask.max_events
    last = upto if whole else positions[-1]
    return ReplayPage(events, positions, last, head, live if live is not None and last == head else None)


async def _fill(conn: asyncpg.Connection, rows: list[asyncpg.Record], max_bytes: int, limit: int, head: int,
                live: LiveFrom | None) -> tuple[list[msgspec.Raw], list[int], list[EventWithheld]]:
    """The rows, from the first, that one page of at most `limit` bytes carries (and `max_bytes` of events, if
    asked), each with its position; a row too large for a page of its own goes as a marker."""
    # the room the page's own fields leave at most (`last` is at most `head`; `live` whether or not it goes)
    room = limit - natsio.message_size(encode(ReplayPage([], [], head, head, live)))
    max_bytes = min(max_bytes or room, room)
    position_bytes = len(str(head)) + 2          # a position, no wider than the head, and two commas
    events: list[msgspec.Raw] = []
    positions: list[int] = []
    withheld: list[EventWithheld] = []
    size = page = 0                     # bytes of the events, and of the events with their positions
    for row in rows:
        position, data = row["position"], row["payload"].encode()
        cost = len(data) + position_bytes
        marker = None
        if cost > room:                                  # a page of its own, then: does even that fit?
            alone = natsio.message_size(encode(ReplayPage([msgspec.Raw(data)], [position], head, head, live)))
            if alone > limit:
                marker = await _withheld(conn, row, alone, limit)
                data = encode(marker)
                cost = len(data) + position_bytes
        if events and (size + len(data) + 1 > max_bytes or page + cost > room):
            break
        events.append(msgspec.Raw(data))
        positions.append(position)
        size, page = size + len(data) + 1, page + cost
        if marker is not None:
            withheld.append(marker)
    return events, positions, withheld


async def _withheld(conn: asyncpg.Connection, row: asyncpg.Record, size: int, limit: int) -> EventWithheld:
    """The marker a page carries in place of a row whose page alone would be `size` bytes, over `limit`."""
    event_id = UUID(await eventlog.event_id_at(conn, row["position"]))
    return EventWithheld(event_id=event_id, event_type=row["type"], position=row["position"], size_bytes=size,
                         max_payload=limit, withheld_by=subjects.METERING_REPLAY, tenant=row["tenant"])


async def _start_of(conn: asyncpg.Connection, since: datetime, head: int) -> int:
    """The position before the first event that occurred at or after `since` (the head when none did)."""
    first = await conn.fetchval("SELECT min(position) FROM events WHERE occurred_at >= $1", since)
    return head if first is None else first - 1
