"""Quota contracts: limits, reservations and their settlement (quota service).

`LimitsSet` is the one quota fact: a tenant's (or tenant x model's) limits after a
change, in full. Counters are not events: they are a projection of the usage log
kept in Valkey. The request/reply messages below serve the admin API (set limits),
the views (quotas, usage) and the reservation path through NATS.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import Event

BudgetPeriod = Literal["day", "week", "month"]
UsagePeriod = Literal["day", "week", "month"]


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every limit a tenant (or one of its models) can have; None means no such limit.

    Token quotas count input plus output tokens. `key_rpm` / `key_tpm` apply to each
    key (or JWT subject) of the tenant on its own; `rpm` / `tpm` to the tenant as a whole.
    `timezone` (IANA name) places the calendar days, weeks (from Monday) and months; it
    is set per tenant only. `default_max_tokens` is the output estimate for a call that
    gives no `max_tokens`.
    """

    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    monthly_requests: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    key_rpm: int | None = None
    key_tpm: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "month"
    timezone: str | None = None
    default_max_tokens: int | None = None


class LimitsSet(Event, frozen=True, tag=s.LIMITS_SET):
    """A tenant's limits (model_id "") or a tenant x model's limits were set; full state after the change."""

    tenant_id: str
    model_id: str = ""
    limits: Limits = Limits()

    @property
    def identifier(self) -> str:
        return self.tenant_id


# --- commands (QUOTA_COMMAND) ----------------------------------------------------


class LimitsUpdate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A change to limits: a field left out keeps its value, null removes that limit.

    This is the admin API's request body, so unknown fields are refused (a typo must
    not silently set nothing).
    """

    daily_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    monthly_tokens: int | None | msgspec.UnsetType = msgspec.UNSET
    monthly_requests: int | None | msgspec.UnsetType = msgspec.UNSET
    rpm: int | None | msgspec.UnsetType = msgspec.UNSET
    tpm: int | None | msgspec.UnsetType = msgspec.UNSET
    key_rpm: int | None | msgspec.UnsetType = msgspec.UNSET
    key_tpm: int | None | msgspec.UnsetType = msgspec.UNSET
    budget_usd: float | None | msgspec.UnsetType = msgspec.UNSET
    budget_period: BudgetPeriod | None | msgspec.UnsetType = msgspec.UNSET
    timezone: str | None | msgspec.UnsetType = msgspec.UNSET
    default_max_tokens: int | None | msgspec.UnsetType = msgspec.UNSET


class SetLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Change a tenant's limits (model_id "") or a tenant x model's."""

    tenant_id: str
    model_id: str = ""
    update: LimitsUpdate = LimitsUpdate()


class SetLimitsReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The event recorded (none when nothing changed) and the limits now in force."""

    limits: Limits
    event: LimitsSet | None = None


# --- queries (QUOTA_QUERY) ---------------------------------------------------------


class QuotaQuery(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """`limits`: a tenant's limits; `quotas`: each limit with its use; `usage`: one period's figures."""

    kind: Literal["limits", "quotas", "usage"]
    tenant_id: str
    period: UsagePeriod = "day"
    model_id: str | None = None
    key_id: str | None = None       # `quotas`: also show the per-key rate limits of this key


class QuotaStatus(msgspec.Struct, frozen=True):
    """One limit and how much of it is used (reservations in flight included)."""

    quota_type: str                 # daily | monthly | requests | budget | rpm | tpm | key_rpm | key_tpm
    model_id: str | None
    limit: float
    used: float
    remaining: float
    period: str                     # day | week | month | minute
    reset_time: str                 # ISO-8601, UTC


class QuotasReply(msgspec.Struct, frozen=True):
    tenant_id: str
    timezone: str
    quotas: list[QuotaStatus]


class UsageFigures(msgspec.Struct, frozen=True):
    """Settled usage of one period; `reserved_tokens` are held by calls still running; `cached_tokens` are
    the part of `input_tokens` the upstream served from its prompt cache."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    reserved_tokens: int = 0
    cached_tokens: int = 0


class ModelUsage(UsageFigures, frozen=True, kw_only=True):
    model_id: str = ""


class UsageReply(msgspec.Struct, frozen=True):
    tenant_id: str
    period: UsagePeriod
    timezone: str
    period_start: str               # ISO-8601, UTC
    reset_time: str                 # ISO-8601, UTC
    model_id: str | None
    usage: UsageFigures
    models: list[ModelUsage]


class LimitsReply(msgspec.Struct, frozen=True):
    tenant_id: str
    limits: Limits
    models: dict[str, Limits]


# --- reservations through NATS (QUOTA_RESERVE) ------------------------------------
# The gateway reserves straight in Valkey (docs/performance.md); this path exists for
# deployments that keep Valkey private to the quota service, and for the benchmark.


class Counter(msgspec.Struct, frozen=True, array_like=True):
    """One limit to reserve against: a counter (hash key + field), its limit and the amount."""

    key: str
    field: str
    limit: int
    amount: int
    mode: Literal["p", "r"]         # p: a period counter (refunded, then settled from the log); r: a rate window
    measure: Literal["t", "r", "u"]  # tokens, requests, USD (nanos)
    expire_at: int                  # unix seconds


class ReservePlan(msgspec.Struct, frozen=True):
    request_id: str
    deadline_ms: int
    counters: list[Counter]


class ReserveReply(msgspec.Struct, frozen=True):
    """ok, or the 1-based index of the first counter that would go over and its current value."""

    ok: bool
    index: int = 0
    used: int = 0


# The events this module defines; `codec` joins them with the others.
EVENT_CLASSES: tuple[type[Event], ...] = (LimitsSet,)
