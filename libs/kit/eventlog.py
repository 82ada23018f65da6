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

from libs.contracts.codec import decode_event
from libs.contracts.events import Event, event_type

APPEND_LOCK = 0x5359_4C4F47  # "SYLOG"
MIGRATE_LOCK = 0x5359_4D4947  # "SYMIG"
_encode = msgspec.json.Encoder().encode

Positioned = tuple[int, Event]


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in order."""
    found = []
    for entry in resources.files("libs.kit").joinpath("migrations").iterdir():
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


async def append(conn: asyncpg.Connection, events: Sequence[Event]) -> list[Positioned]:
    """Append events inside the caller's transaction; return the new ones with their positions.

    An event already in the log (a redelivery) is skipped and not returned.
    """
    if not events:
        return []
    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
    by_id: dict[object, Event] = {}
    for event in events:
        by_id.setdefault(event.event_id, event)
    unique = list(by_id.values())
    rows = await conn.fetch(
        _APPEND_SQL,
        [e.event_id for e in unique],
        [event_type(e) for e in unique],
        [e.tenant for e in unique],
        [e.occurred_at for e in unique],
        [_encode(e).decode() for e in unique],
    )
    appended = [(row["position"], by_id[row["event_id"]]) for row in rows]
    appended.sort(key=lambda pair: pair[0])
    return appended


async def read(
    conn: asyncpg.Connection, after: int, limit: int = 5000,
    types: Iterable[str] | None = None, upto: int | None = None,
) -> list[Positioned]:
    """Events with position > after (and <= upto), oldest first, optionally of some types only."""
    type_list = list(types) if types is not None else None
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
    type_list = list(types) if types is not None else None
    while True:
        batch = await read(conn, after, chunk, type_list, upto)
        if not batch:
            return
        yield batch
        after = batch[-1][0]


async def head(conn: asyncpg.Connection) -> int:
    """The position of the newest event (0 for an empty log)."""
    return await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")


async def count(conn: asyncpg.Connection, type_: str | None = None) -> int:
    """How many events the log holds, optionally of one type."""
    if type_ is None:
        return await conn.fetchval("SELECT count(*) FROM events")
    return await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", type_)


async def create_pool(url: str, timeout_s: float = 30.0, size: int = 10) -> asyncpg.Pool:
    """A connection pool, waiting up to `timeout_s` for PostgreSQL to answer."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncpg.create_pool(url, min_size=1, max_size=size, timeout=5, command_timeout=60)
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"PostgreSQL did not answer within {timeout_s:.0f} s: {exc}") from exc
            await asyncio.sleep(0.3)
