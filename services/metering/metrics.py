"""Metering's Prometheus metrics: what was committed to the log, in tokens, calls and USD.

Counted after each commit (a rolled-back batch counts nothing). Consumer lag and commit
latency come from the follower itself (libs/kit/projections.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter

from libs.contracts.events import UsageRecorded
from libs.kit.eventlog import Positioned
from services.metering.pricing import PriceBook

TOKENS = Counter("switchyard_metered_tokens_total", "Tokens recorded in the usage log",
                 ["tenant", "model", "direction"])
CALLS = Counter("switchyard_metered_calls_total", "Calls recorded in the usage log",
                ["tenant", "model", "outcome", "estimated"])
COST = Counter("switchyard_cost_usd_total", "USD recorded in the usage log, at the registry's prices",
               ["tenant", "model"])
EMBEDDING_COST = Counter("embedding_cost_usd_total", "USD of embedding calls recorded in the usage log", ["model"])

_FEMTO = 1e-15


def observe_committed(appended: Sequence[Positioned], book: PriceBook | None) -> None:
    """Count what one committed batch added to the log."""
    tokens: dict[tuple[str, str], list[int]] = {}
    calls: dict[tuple[str, str, str, str], int] = {}
    femto: dict[tuple[str, str], int] = {}
    embedding_femto: dict[str, int] = {}
    for _, event in appended:
        if not isinstance(event, UsageRecorded):
            continue
        key = (event.tenant_id, event.model)
        pair = tokens.setdefault(key, [0, 0])
        pair[0] += event.input_tokens
        pair[1] += event.output_tokens
        call_key = (event.tenant_id, event.model, event.outcome, "true" if event.estimated else "false")
        calls[call_key] = calls.get(call_key, 0) + 1
        price = book.price(event.tenant_id, event.model) if book is not None else None
        if price is not None:
            cost = event.input_tokens * price[0] + event.output_tokens * price[1]
            femto[key] = femto.get(key, 0) + cost
            if "embed" in event.api:
                embedding_femto[event.model] = embedding_femto.get(event.model, 0) + cost
    for (tenant, model), (tokens_in, tokens_out) in tokens.items():
        TOKENS.labels(tenant, model, "input").inc(tokens_in)
        TOKENS.labels(tenant, model, "output").inc(tokens_out)
    for labels, count in calls.items():
        CALLS.labels(*labels).inc(count)
    for (tenant, model), cost in femto.items():
        COST.labels(tenant, model).inc(cost * _FEMTO)
    for model, cost in embedding_femto.items():
        EMBEDDING_COST.labels(model).inc(cost * _FEMTO)
