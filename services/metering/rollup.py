"""Roll the minute time series up into days, and optionally trim the rolled-up minutes.

Days are never computed *from* minutes: `usage_days` is its own projection of the
usage events, complete at all times. Rolling up moves the point before which the
time series is shown by day; trimming deletes the minutes before it (the days
keep their totals). Both points are whole UTC days and only move forward, so
running the same rollup twice changes nothing, and nothing can be counted twice.
The series projection skips minutes before the trim point when it folds, so a
rebuild after a trim equals the live view.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import RollupDays, RollupReply
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.events.project import lock_checkpoint
from switchyard_gateway.services.metering.projections import UsageSeries


def cutoff(days: int, now: datetime) -> datetime:
    """Midnight (UTC) `days` days before today; a day before year 1 is refused like a negative count."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        if days < 0:
            raise OverflowError
        return today - timedelta(days=days)
    except OverflowError:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "'days' must be 0 or more, and name a day after "
                                                              "year 1", "days")) from None


async def roll_up(conn: asyncpg.Connection, command: RollupDays, now: datetime) -> RollupReply:
    """Move the rollup (and trim) point to the cutoff if it is later; report what that changed."""
    before = cutoff(command.days, now)
    async with conn.transaction():
        await lock_checkpoint(conn, UsageSeries.name)       # the series follower waits: no fold sees half a trim
        row = await conn.fetchrow("SELECT rolled_before, trimmed_before FROM time_series_rollup")
        rolled = row["rolled_before"] if row else None
        trimmed = row["trimmed_before"] if row else None
        new_rolled = max(rolled, before) if rolled is not None else before
        new_trimmed = (max(trimmed, before) if trimmed is not None else before) if command.trim_old else trimmed
        deleted = 0
        if new_trimmed is not None and new_trimmed != trimmed:
            status = await conn.execute("DELETE FROM usage_minutes WHERE minute < $1", new_trimmed)
            deleted = int(status.split()[-1])
        changed = (new_rolled, new_trimmed) != (rolled, trimmed)
        if changed:
            await conn.execute(
                "INSERT INTO time_series_rollup (rolled_before, trimmed_before) VALUES ($1, $2)"
                " ON CONFLICT (singleton) DO UPDATE SET rolled_before = excluded.rolled_before,"
                " trimmed_before = excluded.trimmed_before, updated_at = now()", new_rolled, new_trimmed)
        day_rows = await conn.fetchval(
            "SELECT count(*) FROM usage_days WHERE day < ($1::timestamptz AT TIME ZONE 'UTC')::date", new_rolled)
    return RollupReply(
        days=command.days, trim_old=command.trim_old, changed=changed, rolled_up_before=new_rolled.isoformat(),
        trimmed_before=new_trimmed.isoformat() if new_trimmed is not None else None,
        day_rows=day_rows, minute_rows_trimmed=deleted,
    )
