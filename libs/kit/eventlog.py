"""The append-only event log in PostgreSQL: migrations, append, read.

Appends take one transaction-scoped advisory lock, so positions become visible
in order and a reader that remembers "everything up to position N" never skips
an event committed later with a smaller position.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources

import asyncpg
import msgspec

from switchyard_gateway.contracts.codec import decode_event, stored_types
from switchyard_gateway.contracts.events import Event, event_type
from switchyard_gateway.kit.retry import TRANSIENT, Backoff, retry

APPEND_LOCK = 0x5359_4C4F47  # "SYLOG"
MIGRATE_LOCK = 0x5359_4D4947  # "SYMIG"
_encode = msgspec.json.Encoder().encode

Positioned = tuple[int, Event]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    found = []
    for entry in resources.files("switchyard_gateway.kit").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; safe to run from every replica at once."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
    return applied


_APPEND_SQL = """
INSERT INTO events (event_id, type, tenant, occurred_at, payload)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::json[])
ON CONFLICT (event_id) DO NOTHING
RETURNING position, event_id
"""
_COLUMNS = ("event_id", "type", "tenant", "occurred_at", "payload")
COPY_FROM = 64          # batches this large go through COPY (about twice the rows/s of INSERT ... unnest)
# The positions COPY just drew from the identity sequence, and the event found at the first of them.
_COPIED_SQL = """
SELECT last, (SELECT event_id FROM events WHERE position = last - $1 + 1) AS first_id
FROM (SELECT currval(pg_get_serial_sequence('events', 'position')) AS last) AS s
"""


class Prepared:
    """A batch made ready to append: de-duplicated by event id, its rows built. Building the rows is the
    Python share of an append; a caller with a transaction in flight can prepare the next batch meanwhile."""

    __slots__ = ("by_id", "records")

    def __init__(self, events: Iterable[Event]) -> None:
        self.by_id: dict[object, Event] = {}
        for event in events:
            self.by_id.setdefault(event.event_id, event)
        self.records = [(e.event_id, event_type(e), e.tenant, e.occurred_at, _encode(e).decode())
                        for e in self.by_id.values()]


async def append(conn: asyncpg.Connection, events: Sequence[Event] | Prepared) -> list[Positioned]:
    """Append events inside the caller's transaction; return the new ones with their positions.

    An event already in the log (a redelivery) is skipped and not returned.
    """
    batch = events if isinstance(events, Prepared) else Prepared(events)
    if not batch.by_id:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
    if len(batch.records) >= COPY_FROM:
        return await _copy(conn, batch.by_id, batch.records)
    by_id = batch.by_id
    rows = await conn.fetch(_APPEND_SQL, *(list(column) for column in zip(*batch.records)))
    appended = [(row["position"], by_id[row["event_id"]]) for row in rows]
    appended.sort(key=lambda pair: pair[0])
    return appended


async def _copy(conn: asyncpg.Connection, by_id: dict[object, Event], records: list[tuple]) -> list[Positioned]:
    """COPY the events not yet in the log straight into it.

    Most batches hold no event the log has: they are copied in optimistically; if
    one does (a redelivery), the copy is undone and repeated without those.
    Every appender holds APPEND_LOCK, so nobody else draws from the identity
    sequence meanwhile: COPY's rows get consecutive positions in input order,
    ending at `currval`. That is checked (the first row must sit at the first of
    those positions); if it ever does not hold, positions are read back by id.
    """
    try:
        async with conn.transaction():          # a savepoint: a redelivered batch fails as a whole, cheaply
            await conn.copy_records_to_table("events", columns=_COLUMNS, records=records)
    except asyncpg.UniqueViolationError:
        known = {row["event_id"] for row in await conn.fetch(
            "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])", list(by_id))}
        if len(known) == len(by_id):
            return []
        by_id = {event_id: event for event_id, event in by_id.items() if event_id not in known}
        await conn.copy_records_to_table("events", columns=_COLUMNS, records=[r for r in records if r[0] in by_id])
    new = list(by_id.values())
    row = await conn.fetchrow(_COPIED_SQL, len(new))
    if row["first_id"] == new[0].event_id:
        first = row["last"] - len(new) + 1
        return list(zip(range(first, first + len(new)), new))
    found = await conn.fetch("SELECT position, event_id FROM events WHERE event_id = ANY($1::uuid[])"
                             " ORDER BY position", list(by_id))
    return [(r["position"], by_id[r["event_id"]]) for r in found]


async def read(
    conn: asyncpg.Connection, after: int, limit: int = 5000,
    types: Iterable[str] | None = None, upto: int | None = None,
) -> list[Positioned]:
    """Events with position > after (and <= upto), oldest first, optionally of some types only (older versions of
    those types included, upcast)."""
    type_list = stored_types(types) if types is not None else None
    rows = await conn.fetch(
        "SELECT position, payload FROM events WHERE position > $1"
        " AND ($2::text[] IS NULL OR type = ANY($2))"
        " AND ($3::bigint IS NULL OR position <= $3)"
        " ORDER BY position LIMIT $4",
        after, type_list, upto, limit,
    )
    return [(row["position"], decode_event(row["payload"])) for row in rows]


async def read_all(
    conn: asyncpg.Connection, after: int = 0, types: Iterable[str] | None = None,
    chunk: int = 10_000, upto: int | None = None,
) -> AsyncIterator[list[Positioned]]:
    """Every event after a position, in chunks."""
    type_list = stored_types(types) if types is not None else None
    while True:
        batch = await read(conn, after, chunk, type_list, upto)
        if not batch:
            return
        yield batch
        after = batch[-1][0]


async def read_rows(
    conn: asyncpg.Connection, after: int, types: Iterable[str] | None, upto: int, limit: int,
) -> list[asyncpg.Record]:
    """Raw rows (position, type, payload text) with after < position <= upto, oldest first: for
    readers that decode payloads themselves (a rebuild may decode only the fields it folds); older versions of
    `types` included, as stored."""
    type_list = stored_types(types) if types is not None else None
    return await conn.fetch(
        "SELECT position, type, payload FROM events WHERE position > $1 AND position <= $2"
        " AND ($3::text[] IS NULL OR type = ANY($3)) ORDER BY position LIMIT $4",
        after, upto, type_list, limit,
    )


# What the log's public readers (the LOG stream's feed, replay pages: outside subscribers) get of an event that
# holds a credential's hash: the hash blanked, the field kept (so the event still decodes as its contract says).
# A user's password hash can be cracked offline; a key's hash is a key's fingerprint. The services rebuild from
# the log itself, which keeps them.
CREDENTIAL_FIELDS = {"user.created.v1": "password_hash", "user.password_changed.v1": "password_hash",
                     "key.issued.v1": "key_sha256"}
# Blanked in the text, not through jsonb: jsonb refuses a string holding \u0000 (which the log may keep), and one
# such row would stop the feed for good. The field's name in quotes, a colon, a JSON string: only the field
# itself can match, since a quote inside any string value is escaped.
PUBLIC_PAYLOAD = "CASE type " + " ".join(      # the payload as text
    f"WHEN '{event_type}' THEN regexp_replace(payload::text, "
    f"'\"{field}\"\\s*:\\s*\"([^\"\\\\]|\\\\.)*\"', '\"{field}\":\"\"')"
    for event_type, field in CREDENTIAL_FIELDS.items()) + " ELSE payload::text END"


async def read_stored(
    conn: asyncpg.Connection, after: int, upto: int, limit: int, *,
    like: Sequence[str] | None = None, tenant: str | None = None,
) -> list[asyncpg.Record]:
    """Rows as the log's public readers get them (position, type, tenant, payload as text: `PUBLIC_PAYLOAD`) with
    after < position <= upto, oldest first, optionally only of types matching LIKE patterns and of one tenant:
    for readers that pass events on without decoding them (replay pages)."""
    return await conn.fetch(
        f"SELECT position, type, tenant, {PUBLIC_PAYLOAD} AS payload FROM events"
        " WHERE position > $1 AND position <= $2"
        " AND ($3::text[] IS NULL OR type LIKE ANY($3)) AND ($4::text IS NULL OR tenant = $4)"
        " ORDER BY position LIMIT $5",
        after, upto, None if like is None else list(like), tenant, limit,
    )


_RUNS_SQL = """
WITH chunk AS (
    SELECT position, type, tenant, payload FROM events WHERE position > $1 ORDER BY position LIMIT $2
), starts AS (
    SELECT *, CASE WHEN position = lag(position) OVER w + 1 AND type = lag(type) OVER w
                   AND tenant IS NOT DISTINCT FROM lag(tenant) OVER w THEN 0 ELSE 1 END AS starts
    FROM chunk WINDOW w AS (ORDER BY position)
), runs AS (
    SELECT *, sum(starts) OVER (ORDER BY position) AS run FROM starts
), parts AS (
    SELECT *, (row_number() OVER (PARTITION BY run ORDER BY position) - 1) / $3 AS part FROM runs
)
SELECT min(position) AS first, max(position) AS last, min(type) AS type, min(tenant) AS tenant,
       '[' || string_agg(PUBLIC_PAYLOAD, ',' ORDER BY position) || ']' AS body
FROM parts GROUP BY run, part ORDER BY first
""".replace("PUBLIC_PAYLOAD", PUBLIC_PAYLOAD)


async def read_runs(conn: asyncpg.Connection, after: int, limit: int, run_events: int) -> list[asyncpg.Record]:
    """The next `limit` events after a position as runs (first, last, type, tenant, body): events of one type and
    tenant at consecutive positions, at most `run_events` a run, each run's events joined into one JSON array by
    PostgreSQL as public readers get them (`PUBLIC_PAYLOAD`): for the feed, at a cost per run, not per event."""
    return await conn.fetch(_RUNS_SQL, after, limit, run_events)


async def read_payloads(conn: asyncpg.Connection, after: int, upto: int, types: Iterable[str]) -> list[str]:
    """The payloads alone of the events of `types` (as stored, older versions not included unless named) with
    after < position <= upto, in no particular order: for a reader that only sums what it reads."""
    rows = await conn.fetch("SELECT payload FROM events WHERE position > $1 AND position <= $2 AND type = ANY($3)",
                            after, upto, list(types))
    return [row[0] for row in rows]


_TYPES_SQL = """
WITH RECURSIVE present(type) AS (
    (SELECT type FROM events ORDER BY type LIMIT 1)
    UNION ALL
    SELECT (SELECT e.type FROM events e WHERE e.type > p.type ORDER BY e.type LIMIT 1) FROM present p
    WHERE p.type IS NOT NULL
)
SELECT type FROM present WHERE type IS NOT NULL
"""


async def types_stored(conn: asyncpg.Connection) -> list[str]:
    """Every type string the log holds, sorted: a walk of the (type, position) index, one probe per type."""
    return [row[0] for row in await conn.fetch(_TYPES_SQL)]


async def event_id_at(conn: asyncpg.Connection, position: int) -> str:
    """The event id stored at a position, as text (for an event that is not decoded)."""
    return str(await conn.fetchval("SELECT event_id FROM events WHERE position = $1", position))


async def head(conn: asyncpg.Connection) -> int:
    """The position of the newest event (0 for an empty log)."""
    return await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")


async def count(conn: asyncpg.Connection, type_: str | None = None) -> int:
    """How many events the log holds, optionally of one type (its older versions included)."""
    if type_ is None:
        return await conn.fetchval("SELECT count(*) FROM events")
    return await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1)", stored_types([type_]))


async def create_pool(url: str, timeout_s: float = 30.0, size: int = 10) -> asyncpg.Pool:
    """A connection pool, waiting up to `timeout_s` for PostgreSQL to answer."""
    async def attempt() -> asyncpg.Pool:
        return await asyncpg.create_pool(url, min_size=1, max_size=size, timeout=5, command_timeout=60)

    try:
        return await retry(attempt, what=None, backoff=Backoff(0.3, 0.3), deadline_s=timeout_s)
    except TRANSIENT as exc:
        raise ConnectionError(f"PostgreSQL did not answer within {timeout_s:.0f} s: {exc}") from exc
