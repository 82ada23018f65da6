"""Metering's request/reply messages: usage queries (`metering.query.v1`) and the time-series rollup
(`metering.command.v1`), with the replies each one gets.

Every query takes `tenant_id`: None for an operator (every tenant's figures), else one tenant's own.
"""

from __future__ import annotations

from typing import Literal

import msgspec

MeteringQueryKind = Literal["token_counts", "usage", "stats"]


class MeteringQuery(msgspec.Struct, frozen=True, omit_defaults=True):
    """A question on `metering.query.v1`: token counts (the default), token usage, or one model's stats."""

    query: MeteringQueryKind = "token_counts"
    tenant_id: str | None = None
    model: str | None = None          # stats: the model (its registry id); required there
    since: float | None = None        # stats: time series points from this instant (epoch seconds)


class TokenCount(msgspec.Struct, frozen=True):
    """Tokens and calls of one endpoint x model (`endpoint` is "" in one tenant's figures)."""

    endpoint: str
    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    calls: int
    cached_tokens: int = 0          # of input_tokens, served from the upstream's prompt cache


class TokenCountsReply(msgspec.Struct, frozen=True):
    """`token_counts`: the total and its breakdown per endpoint and model."""

    total_tokens: int
    breakdown: list[TokenCount]


class TokenUsageReply(msgspec.Struct, frozen=True):
    """`usage`: total tokens per endpoint, then per model (`{endpoint: {model: tokens}}`)."""

    token_usage_counts: dict[str, dict[str, int]]


class SeriesPoint(msgspec.Struct, frozen=True):
    """Tokens of one endpoint in one UTC minute, or one UTC day before the rollup point."""

    endpoint: str
    timestamp: int                    # the minute's or the day's start, epoch seconds
    granularity: Literal["minute", "day"]
    input_tokens: int
    output_tokens: int
    total_tokens: int


class ModelStats(msgspec.Struct, frozen=True, kw_only=True):
    """`stats`: one model's totals, its time series (oldest first) and its tokens per endpoint."""

    model: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int = 0            # of input_tokens, served from the upstream's prompt cache
    calls: int
    errors: int
    estimated_calls: int
    cost_usd: float
    time_series: list[SeriesPoint]
    endpoint_distribution: dict[str, int]
    truncated: bool = False           # the series was cut to its latest points


class RollupDays(msgspec.Struct, frozen=True):
    """Show the time series by day before `days` days ago; `trim_old` also deletes those minutes."""

    days: int
    trim_old: bool = False


class RollupReply(msgspec.Struct, frozen=True):
    """What a rollup changed; running the same rollup again changes nothing."""

    days: int
    trim_old: bool
    changed: bool
    rolled_up_before: str             # ISO 8601, a UTC midnight
    trimmed_before: str | None
    day_rows: int
    minute_rows_trimmed: int
