"""`switchyard events tail` and `switchyard events export`: read the event log as JSON lines.

Both read the database of `switchyard up --data-dir D` (or SWITCHYARD_DATABASE_URL), like replay.
`export` writes each event exactly as stored, one per line, so a file can be read back with the
contracts' decoder; `tail` puts the log position first in each line and follows new events.
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import asyncpg

from switchyard_gateway.events import Watermark
from switchyard_gateway.events.notices import CHANNEL
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.stack import running_url

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])\Z")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# a type, or a prefix of one ending at a dot: `starts_with`, not LIKE, so `%` and `_` in it match only themselves
_FILTER = ("($1::text IS NULL OR type = $1 OR starts_with(type, $1 || '.'))"
           " AND ($2::text IS NULL OR tenant = $2)")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An instant: ISO 8601 ('2026-11-22', '2026-11-22T10:00:00Z'; UTC when no offset) or an age ('90m', '7d')."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        try:
            return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        except OverflowError:
            raise SystemExit(f"switchyard: the age {text!r} reaches back before the year 1") from None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise SystemExit(f"switchyard: cannot read the time {text!r}: use ISO 8601 (2026-11-22T10:00:00Z) "
                         "or an age such as 30m, 12h, 7d") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


TAIL_CHUNK = 10_000


def _line(position: int, payload: str) -> str:
    """The stored event with its log position as the first field."""
    return f'{{"position":{position},{payload[1:]}' if payload.startswith("{") else payload


async def tail(data_dir: Path, type_: str | None, tenant: str | None, lines: int, follow: bool,
               out: TextIO = sys.stdout) -> int:
    """Print the last `lines` matching events, then (if `follow`) every new one as it is appended: woken by
    the NOTIFY each append sends at commit, so an idle log costs nothing."""
    conn = await asyncpg.connect(running_url(data_dir, "database_url"))
    commits = Watermark()
    try:
        if follow:
            await conn.add_listener(CHANNEL, lambda *_: commits.advance(commits.value + 1))
        rows = await conn.fetch(
            f"SELECT position, payload::text AS payload FROM events WHERE {_FILTER} ORDER BY position DESC LIMIT $3",
            type_, tenant, lines)
        for row in reversed(rows):
            out.write(_line(row["position"], row["payload"]) + "\n")
        out.flush()
        after = rows[0]["position"] if rows else await eventlog.head(conn)
        seen, more = 0, False
        while follow:
            if not more:
                await commits.beyond(seen)
                seen = commits.value        # before the read: a commit during it wakes the next one
            rows = await conn.fetch(
                f"SELECT position, payload::text AS payload FROM events WHERE position > $3 AND {_FILTER}"
                " ORDER BY position LIMIT $4", type_, tenant, after, TAIL_CHUNK)
            more = len(rows) == TAIL_CHUNK
            for row in rows:
                out.write(_line(row["position"], row["payload"]) + "\n")
            if rows:
                out.flush()
                after = rows[-1]["position"]
            else:
                # nothing matched: skip ahead so the next look reads only what is new
                after = max(after, await eventlog.head(conn))
        return 0
    finally:
        await conn.close()


async def export(data_dir: Path, since: datetime, until: datetime | None, type_: str | None,
                 tenant: str | None, out: TextIO = sys.stdout) -> int:
    """Write every matching event that occurred at or after `since` (and before `until`), in log order."""
    conn = await asyncpg.connect(running_url(data_dir, "database_url"))
    count = 0
    try:
        async with conn.transaction():
            cursor = conn.cursor(
                f"SELECT payload::text FROM events WHERE {_FILTER} AND occurred_at >= $3"
                " AND ($4::timestamptz IS NULL OR occurred_at < $4) ORDER BY position",
                type_, tenant, since, until, prefetch=10_000)
            async for row in cursor:
                out.write(row[0])
                out.write("\n")
                count += 1
        out.flush()
    finally:
        await conn.close()
    print(f"switchyard: exported {count:,} events since {since.isoformat()}", file=sys.stderr)
    return 0
