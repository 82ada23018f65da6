"""Read the usage projections for the monitoring API: token counts, usage per endpoint, model stats.

Every query takes `tenant_id`: None for an operator (everything), else one tenant's own figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg

from switchyard_gateway.contracts.metering import ModelStats, SeriesPoint, TokenCount, TokenCountsReply

MAX_SERIES_POINTS = 20_000


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def token_counts(conn: asyncpg.Connection, tenant_id: str | None) -> TokenCountsReply:
    """Totals per endpoint x model (all tenants), or per model for one tenant."""
    if tenant_id is None:
        rows = await conn.fetch(
            "SELECT endpoint, model, input_tokens, output_tokens, calls, cached_tokens FROM token_counts"
            " ORDER BY endpoint, model"
        )
    else:
        rows = await conn.fetch(
            "SELECT '' AS endpoint, model, input_tokens, output_tokens, calls, cached_tokens FROM tenant_token_counts"
            " WHERE tenant = $1 ORDER BY model",
            tenant_id,
        )
    breakdown = [
        TokenCount(r["endpoint"], r["model"], r["input_tokens"], r["output_tokens"],
                   r["input_tokens"] + r["output_tokens"], r["calls"], r["cached_tokens"])
        for r in rows
    ]
    return TokenCountsReply(sum(t.total_tokens for t in breakdown), breakdown)


async def token_usage(conn: asyncpg.Connection, tenant_id: str | None) -> dict[str, dict[str, int]]:
    """Total tokens per endpoint and model: {endpoint: {model: tokens}}."""
    if tenant_id is None:
        rows = await conn.fetch("SELECT endpoint, model, input_tokens + output_tokens AS tokens FROM token_counts")
    else:
        rows = await conn.fetch(
            "SELECT endpoint, model, sum(input_tokens + output_tokens)::bigint AS tokens FROM usage_days"
            " WHERE tenant = $1 GROUP BY endpoint, model", tenant_id)
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        out.setdefault(row["endpoint"], {})[row["model"]] = row["tokens"]
    return out


async def rollup_point(conn: asyncpg.Connection) -> datetime | None:
    """Before this instant the time series is shown by day (see rollup.py)."""
    return await conn.fetchval("SELECT rolled_before FROM time_series_rollup")


async def stats(conn: asyncpg.Connection, model: str | None, tenant_id: str | None,
                since: datetime | None = None) -> ModelStats:
    """One model's totals (every model's together when `model` is None, `model` then ""), its time series
    (minutes, and days before the rollup point) and its distribution over endpoints."""
    args: list[Any] = []
    where = []
    for column, value in (("model", model), ("tenant", tenant_id)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    matching = " AND ".join(where) or "true"
    per_endpoint = await conn.fetch(
        "SELECT endpoint, sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,"
        " sum(calls)::bigint AS calls, sum(errors)::bigint AS errors, sum(estimated_calls)::bigint AS estimated,"
        " sum(cached_tokens)::bigint AS cached"
        f" FROM usage_days WHERE {matching} GROUP BY endpoint ORDER BY endpoint", *args)
    cost = await conn.fetchval(
        f"SELECT coalesce(sum(input_cost_usd + output_cost_usd), 0) FROM usage_cost WHERE {matching}", *args)
    rolled = await rollup_point(conn)
    series = await _series(conn, matching, args, rolled, since)
    tokens_in = sum(r["input_tokens"] for r in per_endpoint)
    tokens_out = sum(r["output_tokens"] for r in per_endpoint)
    return ModelStats(
        model=model or "", input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
        cached_tokens=sum(r["cached"] for r in per_endpoint),
        calls=sum(r["calls"] for r in per_endpoint), errors=sum(r["errors"] for r in per_endpoint),
        estimated_calls=sum(r["estimated"] for r in per_endpoint), cost_usd=float(cost),
        time_series=series[-MAX_SERIES_POINTS:],
        endpoint_distribution={r["endpoint"]: r["input_tokens"] + r["output_tokens"] for r in per_endpoint},
        truncated=len(series) > MAX_SERIES_POINTS,
    )


async def _series(conn: asyncpg.Connection, matching: str, args: list[Any], rolled: datetime | None,
                  since: datetime | None) -> list[SeriesPoint]:
    n = len(args)
    days = []
    if rolled is not None:
        days = await conn.fetch(
            "SELECT endpoint, day AS at, sum(input_tokens)::bigint AS i, sum(output_tokens)::bigint AS o"
            f" FROM usage_days WHERE {matching} AND day < (${n + 1}::timestamptz AT TIME ZONE 'UTC')::date"
            f" AND (${n + 2}::timestamptz IS NULL OR day >= (${n + 2}::timestamptz AT TIME ZONE 'UTC')::date)"
            " GROUP BY endpoint, day ORDER BY day, endpoint", *args, rolled, since)
    lower = max((t for t in (rolled, since) if t is not None), default=None)
    minutes = await conn.fetch(
        "SELECT endpoint, minute AS at, sum(input_tokens)::bigint AS i, sum(output_tokens)::bigint AS o"
        f" FROM usage_minutes WHERE {matching} AND (${n + 1}::timestamptz IS NULL OR minute >= ${n + 1})"
        " GROUP BY endpoint, minute ORDER BY minute, endpoint", *args, lower)
    points = [_point(r, "day") for r in days]
    points += [_point(r, "minute") for r in minutes]
    return points


def _point(row: asyncpg.Record, granularity: Literal["minute", "day"]) -> SeriesPoint:
    at = row["at"]
    instant = at if isinstance(at, datetime) else datetime(at.year, at.month, at.day, tzinfo=UTC)
    return SeriesPoint(row["endpoint"], int(instant.timestamp()), granularity, row["i"], row["o"], row["i"] + row["o"])
