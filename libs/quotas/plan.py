"""Which counters a call reserves against: one entry per limit that applies, pure and cheap."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from switchyard_gateway.contracts.quota import Counter, Limits
from switchyard_gateway.quotas.periods import NANOS_PER_USD, Keys, field, zone

# limit name -> (quota type shown to clients, measure, counter period or "rate")
TOKEN_LIMITS = (("daily_tokens", "daily", "day"), ("monthly_tokens", "monthly", "month"))
RATE_LIMITS = (("rpm", "r", False), ("tpm", "t", False), ("key_rpm", "r", True), ("key_tpm", "t", True))


class Planned(NamedTuple):
    """A counter to reserve against, with what a refusal must tell the client."""

    counter: Counter
    quota_type: str        # daily | monthly | requests | budget | rpm | tpm | key_rpm | key_tpm
    model_id: str | None
    reset: datetime        # when the period or rate window ends
    rate: bool             # a rate limit (429) rather than a quota (402)
    reset_s: float = 0.0   # the same as a Unix time (computed once: a plan is reused until then)


class Estimate(NamedTuple):
    tokens: int            # prompt tokens + expected output tokens
    nanos: int             # their cost in nano-USD


def plan(keys: Keys, scopes: tuple[Limits, Limits], timezone: str, tenant_id: str, key_id: str,
         model_id: str, now: datetime, estimate: Estimate) -> list[Planned]:
    """The counters for every limit of the tenant (scope 0) and of the tenant x model (scope 1)."""
    tz = zone(timezone)
    periods: dict[str, tuple[str, datetime, int]] = {}

    def period(name: str) -> tuple[str, datetime, int]:
        if name not in periods:
            periods[name] = keys.period_counter(tenant_id, name, now, tz)
        return periods[name]

    out: list[Planned] = []
    rate_key: tuple[str, int] | None = None
    for scope, limits in zip((None, model_id), scopes):
        for name, quota_type, period_name in TOKEN_LIMITS:
            limit = getattr(limits, name)
            if limit is not None:
                key, end, expire = period(period_name)
                out.append(Planned(Counter(key, field("tok", scope), limit, estimate.tokens, "p", "t", expire),
                                   quota_type, scope, end, False, end.timestamp()))
        if limits.monthly_requests is not None:
            key, end, expire = period("month")
            out.append(Planned(Counter(key, field("req", scope), limits.monthly_requests, 1, "p", "r", expire),
                               "requests", scope, end, False, end.timestamp()))
        if limits.budget_usd is not None:
            key, end, expire = period(limits.budget_period)
            out.append(Planned(Counter(key, field("usd", scope), round(limits.budget_usd * NANOS_PER_USD),
                                       estimate.nanos, "p", "u", expire), "budget", scope, end, False,
                               end.timestamp()))
        for name, measure, per_key in RATE_LIMITS:
            limit = getattr(limits, name)
            if limit is None:
                continue
            if rate_key is None:
                rate_key = keys.rate(tenant_id, now.timestamp())
            key, window_end = rate_key
            amount = 1 if measure == "r" else estimate.tokens
            fld = field("req" if measure == "r" else "tok", scope, key_id if per_key else None)
            out.append(Planned(Counter(key, fld, limit, amount, "r", measure, window_end + 60), name, scope,
                               datetime.fromtimestamp(window_end, now.tzinfo), True, float(window_end)))
    return out
