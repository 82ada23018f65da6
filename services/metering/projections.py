"""Usage projections: each folds a batch in memory (services/metering/folds.py, pricing.py) and writes
its deltas with one statement per table.

    token_counts   token_counts (endpoint x model), tenant_token_counts (tenant x model)
    usage_series   usage_minutes and usage_days (minute x / day x tenant x endpoint x model)
    usage_cost     usage_cost (day x tenant x model, USD), and the prices it folds: cost_models, cost_overrides

A live batch and a whole rebuild run the same folds; a rebuild writes once at the end and, into
freshly emptied tables, copies its rows in instead of merging them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit.eventlog import Positioned
from switchyard_gateway.services.metering.folds import (
    DECODERS, Counts, SeriesKey, add_facts, by_endpoint, by_tenant, facts_of, fold_series, fold_tenant_counts,
    fold_token_counts,
)
from switchyard_gateway.services.metering.pricing import Cost, CostKey, ModelPrice, PriceBook, fold_cost, usd

__all__ = ["DECODERS", "PROJECTIONS", "Counts", "fold_tenant_counts", "fold_token_counts"]

_EPOCH_DAY = date(1970, 1, 1)


class Table(NamedTuple):
    """A projection table: key columns, then value columns that deltas add to (with their SQL types)."""

    name: str
    keys: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, str], ...]

    def merge_sql(self) -> str:
        columns = [*self.keys, *self.values]
        names = ", ".join(c for c, _ in columns)
        arrays = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(columns, 1))
        updates = ", ".join(f"{c} = t.{c} + excluded.{c}" for c, _ in self.values)
        return (f"INSERT INTO {self.name} AS t ({names}) SELECT * FROM unnest({arrays}) "
                f"ON CONFLICT ({', '.join(c for c, _ in self.keys)}) DO UPDATE SET {updates}")

    async def merge(self, conn: asyncpg.Connection, rows: list[tuple[Any, ...]], fresh: bool) -> None:
        """Add rows of deltas: copied in when the table was just emptied, merged otherwise."""
        if not rows:
            return
        if fresh:
            await conn.copy_records_to_table(self.name, records=rows,
                                             columns=[c for c, _ in (*self.keys, *self.values)])
        else:
            await conn.execute(self.merge_sql(), *(list(column) for column in zip(*rows)))


_COUNTS = (("input_tokens", "bigint"), ("output_tokens", "bigint"), ("calls", "bigint"))
_CACHED = (("cached_tokens", "bigint"),)
_SERIES = (*_COUNTS, ("errors", "bigint"), ("estimated_calls", "bigint"), *_CACHED)
TOKEN_COUNTS = Table("token_counts", (("endpoint", "text"), ("model", "text")), (*_COUNTS, *_CACHED))
TENANT_COUNTS = Table("tenant_token_counts", (("tenant", "text"), ("model", "text")),
                      (*_COUNTS, ("errors", "bigint"), *_CACHED))
MINUTES = Table("usage_minutes", (("minute", "timestamptz"), ("tenant", "text"), ("endpoint", "text"),
                                  ("model", "text")), _SERIES)
DAYS = Table("usage_days", (("day", "date"), ("tenant", "text"), ("endpoint", "text"), ("model", "text")), _SERIES)
COST = Table("usage_cost", (("day", "date"), ("tenant", "text"), ("model", "text")), (
    ("calls", "bigint"), ("input_cost_usd", "numeric"), ("output_cost_usd", "numeric"),
    ("estimated_cost_usd", "numeric"), ("unpriced_calls", "bigint")))


def as_day(days: int) -> date:
    return _EPOCH_DAY + timedelta(days=days)


def as_minute(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# --- token_counts ------------------------------------------------------------------------------


class TokenCountsFold:
    def __init__(self) -> None:
        self.by_endpoint: dict[tuple[str, str], Counts] = {}
        self.by_tenant: dict[tuple[str, str], Counts] = {}

    def add(self, batch: Sequence[Positioned]) -> None:
        segments = facts_of(batch)
        add_facts(segments, by_endpoint, self.by_endpoint)
        add_facts(segments, by_tenant, self.by_tenant)

    def size(self) -> int:
        return len(self.by_endpoint) + len(self.by_tenant)

    async def write(self, conn: asyncpg.Connection, fresh: bool) -> None:
        await TOKEN_COUNTS.merge(conn, [(*k, c.input_tokens, c.output_tokens, c.calls, c.cached_tokens)
                                        for k, c in self.by_endpoint.items()], fresh)
        await TENANT_COUNTS.merge(conn, [(*k, c.input_tokens, c.output_tokens, c.calls, c.errors, c.cached_tokens)
                                         for k, c in self.by_tenant.items()], fresh)
        self.by_endpoint, self.by_tenant = {}, {}


class TokenCounts:
    """Token totals per endpoint x model and per tenant x model."""

    name = "token_counts"
    event_types = frozenset({subjects.USAGE_RECORDED})
    tables = (TOKEN_COUNTS.name, TENANT_COUNTS.name)

    async def open(self, conn: asyncpg.Connection) -> TokenCountsFold:
        return TokenCountsFold()

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        fold = await self.open(conn)
        fold.add(batch)
        await fold.write(conn, fresh=False)


# --- usage_series ------------------------------------------------------------------------------


class SeriesFold:
    def __init__(self, trimmed_before: int | None) -> None:
        self.trimmed_before = trimmed_before
        self.minutes: dict[SeriesKey, Counts] = {}
        self.days: dict[SeriesKey, Counts] = {}

    def add(self, batch: Sequence[Positioned]) -> None:
        fold_series(facts_of(batch), self.trimmed_before, self.minutes, self.days)

    def size(self) -> int:
        return len(self.minutes) + len(self.days)

    async def write(self, conn: asyncpg.Connection, fresh: bool) -> None:
        await MINUTES.merge(conn, [(as_minute(k[0]), *k[1:], *_series_values(c)) for k, c in self.minutes.items()],
                            fresh)
        await DAYS.merge(conn, [(as_day(k[0]), *k[1:], *_series_values(c)) for k, c in self.days.items()], fresh)
        self.minutes, self.days = {}, {}


def _series_values(c: Counts) -> tuple[int, ...]:
    return c.input_tokens, c.output_tokens, c.calls, c.errors, c.estimated_calls, c.cached_tokens


async def trimmed_before(conn: asyncpg.Connection) -> datetime | None:
    """Below this instant the minute series was trimmed (see rollup.py); None if never."""
    return await conn.fetchval("SELECT trimmed_before FROM time_series_rollup")


class UsageSeries:
    """A minute time series and daily totals per tenant x endpoint x model."""

    name = "usage_series"
    event_types = frozenset({subjects.USAGE_RECORDED})
    tables = (MINUTES.name, DAYS.name)

    async def open(self, conn: asyncpg.Connection) -> SeriesFold:
        trimmed = await trimmed_before(conn)
        return SeriesFold(int(trimmed.timestamp()) if trimmed is not None else None)

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        fold = await self.open(conn)
        fold.add(batch)
        await fold.write(conn, fresh=False)


# --- usage_cost --------------------------------------------------------------------------------


class CostFold:
    def __init__(self, book: PriceBook) -> None:
        self.book = book
        self.costs: dict[CostKey, Cost] = {}

    def add(self, batch: Sequence[Positioned]) -> None:
        fold_cost(facts_of(batch), self.book, self.costs)

    def size(self) -> int:
        return len(self.costs)

    async def write(self, conn: asyncpg.Connection, fresh: bool) -> None:
        book = self.book
        for model_id in book.changed_models:
            price = book.models[model_id]
            await conn.execute(
                "INSERT INTO cost_models (model_id, aliases, input_nano, output_nano, cached_nano)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (model_id) DO UPDATE SET aliases = excluded.aliases,"
                " input_nano = excluded.input_nano, output_nano = excluded.output_nano,"
                " cached_nano = excluded.cached_nano",
                model_id, list(price.aliases), price.input_nano, price.output_nano, price.cached_nano)
        for tenant, model_id in book.changed_overrides:
            override = book.overrides.get((tenant, model_id))
            if override is None:
                await conn.execute("DELETE FROM cost_overrides WHERE tenant = $1 AND model_id = $2", tenant, model_id)
            else:
                await conn.execute(
                    "INSERT INTO cost_overrides (tenant, model_id, input_nano, output_nano, cached_nano)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, model_id) DO UPDATE SET"
                    " input_nano = excluded.input_nano, output_nano = excluded.output_nano,"
                    " cached_nano = excluded.cached_nano", tenant, model_id, *override)
        book.changed_models, book.changed_overrides = set(), set()
        await COST.merge(conn, [
            (as_day(k[0]), k[1], k[2], c.calls, usd(c.input_femto), usd(c.output_femto), usd(c.estimated_femto),
             c.unpriced_calls) for k, c in self.costs.items()], fresh)
        self.costs = {}


async def load_prices(conn: asyncpg.Connection) -> PriceBook:
    """The price book as the cost projection last wrote it."""
    book = PriceBook()
    for row in await conn.fetch("SELECT model_id, aliases, input_nano, output_nano, cached_nano FROM cost_models"):
        book.models[row["model_id"]] = ModelPrice(row["input_nano"], row["output_nano"], tuple(row["aliases"]),
                                                  row["cached_nano"])
        for alias in row["aliases"]:
            book.aliases[alias] = row["model_id"]
    for row in await conn.fetch("SELECT tenant, model_id, input_nano, output_nano, cached_nano FROM cost_overrides"):
        book.overrides[(row["tenant"], row["model_id"])] = (row["input_nano"], row["output_nano"], row["cached_nano"])
    return book


class UsageCost:
    """USD per day x tenant x model, priced by the registry's prices as they stood at each call."""

    name = "usage_cost"
    event_types = frozenset({subjects.USAGE_RECORDED, subjects.MODEL_REGISTERED,
                             subjects.TENANT_MODEL_ASSIGNED, subjects.TENANT_MODEL_UNASSIGNED})
    tables = ("cost_models", "cost_overrides", COST.name)

    def __init__(self) -> None:
        self.book: PriceBook | None = None     # the prices after the last batch (for metrics, not for folding)

    async def open(self, conn: asyncpg.Connection) -> CostFold:
        return CostFold(await load_prices(conn))

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        fold = await self.open(conn)
        fold.add(batch)
        await fold.write(conn, fresh=False)
        self.book = fold.book


PROJECTIONS = {p.name: p for p in (TokenCounts(), UsageSeries(), UsageCost())}
