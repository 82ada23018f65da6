"""The quota views: each limit with its use, and one period's usage, read from the Valkey counters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from switchyard_gateway.contracts.quota import (
    LimitsReply, ModelUsage, QuotaQuery, QuotasReply, QuotaStatus, UsageFigures, UsageReply,
)
from switchyard_gateway.quotas.limits import NO_LIMITS, LimitsBook
from switchyard_gateway.quotas.periods import NANOS_PER_USD, Keys, field, iso_utc, model_of, period_bounds, zone
from switchyard_gateway.quotas.plan import Estimate, Planned, plan
from switchyard_gateway.resp import Valkey


def limits(book: LimitsBook, query: QuotaQuery) -> LimitsReply:
    return LimitsReply(query.tenant_id, book.tenant(query.tenant_id), dict(book.models.get(query.tenant_id, {})))


def planned(book: LimitsBook, keys: Keys, tenant: str, key_id: str, now: datetime) -> list[Planned]:
    """The counters behind every limit of a tenant and of its models; per-key rate limits only for a key."""
    timezone = book.timezone(tenant)
    scopes = [(None, book.tenant(tenant)), *sorted(book.models.get(tenant, {}).items())]
    out = []
    for model_id, model_limits in scopes:
        pair = (model_limits, NO_LIMITS) if model_id is None else (NO_LIMITS, model_limits)
        for item in plan(keys, pair, timezone, tenant, key_id, model_id or "", now, Estimate(0, 0)):
            if key_id or not item.quota_type.startswith("key_"):
                out.append(item)
    return out


async def read_counters(valkey: Valkey, items: Sequence[Planned]) -> list[int]:
    """The value of each planned counter (reservations included), in one pipeline."""
    values = await asyncio.gather(*(valkey.call("HGET", item.counter.key, item.counter.field) for item in items))
    return [int(raw or 0) for raw in values]


def statuses(book: LimitsBook, tenant: str, items: Sequence[Planned], values: Iterable[int]) -> list[QuotaStatus]:
    """Each limit with its use, from the planned counters and their values (budgets in USD)."""
    out = []
    for item, used in zip(items, values, strict=True):
        limit = item.counter.limit
        if item.quota_type == "budget":
            used_shown, limit_shown = used / NANOS_PER_USD, limit / NANOS_PER_USD
        else:
            used_shown, limit_shown = used, limit
        period = "minute" if item.rate else {"daily": "day", "monthly": "month", "requests": "month"}.get(
            item.quota_type, (book.model(tenant, item.model_id) if item.model_id else book.tenant(tenant)).budget_period)
        out.append(QuotaStatus(item.quota_type, item.model_id, limit_shown, used_shown,
                               max(0, limit_shown - used_shown), period, iso_utc(item.reset)))
    return out


async def quotas(book: LimitsBook, valkey: Valkey, keys: Keys, query: QuotaQuery,
                 now: datetime | None = None) -> QuotasReply:
    """Every limit of the tenant and of its models, with the counter behind it (reservations included)."""
    tenant = query.tenant_id
    items = planned(book, keys, tenant, query.key_id or "", now or datetime.now(UTC))
    values = await read_counters(valkey, items)
    return QuotasReply(tenant, book.timezone(tenant), statuses(book, tenant, items, values))


def _figures(values: dict[str, int], model_id: str | None) -> dict[str, int | float]:
    def value(measure: str) -> int:
        return values.get(field(measure, model_id), 0)

    tokens_in, tokens_out = value("in"), value("out")
    return dict(input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
                cached_tokens=value("cin"), requests=value("req"), cost_usd=round(value("usd") / NANOS_PER_USD, 9),
                reserved_tokens=max(0, value("tok") - tokens_in - tokens_out))


async def usage(book: LimitsBook, valkey: Valkey, keys: Keys, query: QuotaQuery,
                now: datetime | None = None) -> UsageReply:
    """Settled usage of the tenant in the current day, week or month (its time zone), per model too."""
    now = now or datetime.now(UTC)
    timezone = book.timezone(query.tenant_id)
    label, start, end = period_bounds(query.period, now, zone(timezone))
    raw = await valkey.hgetall(keys.counter(query.tenant_id, query.period, label))
    values = {k.decode(): int(v) for k, v in raw.items()}
    models = sorted({m for m in map(model_of, values) if m is not None})
    if query.model_id is not None:
        models = [m for m in models if m == query.model_id]
        total = UsageFigures(**_figures(values, query.model_id))
    else:
        total = UsageFigures(**_figures(values, None))
    per_model = [ModelUsage(model_id=m, **_figures(values, m)) for m in models]
    return UsageReply(query.tenant_id, query.period, timezone, iso_utc(start), iso_utc(end), query.model_id,
                      total, per_model)
