"""Metering's Prometheus metrics: what was committed to the log, in tokens, calls and USD.

Counted after each commit (a rolled-back batch counts nothing). Consumer lag and commit
latency come from the ingest itself (libs/events/ingest.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter

from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.kit.eventlog import Positioned
from switchyard_gateway.services.metering.pricing import PriceBook

TOKENS = Counter("switchyard_metered_tokens_total", "Tokens recorded in the usage log",
                 ["tenant", "model", "direction"])
CALLS = Counter("switchyard_metered_calls_total", "Calls recorded in the usage log",
                ["tenant", "model", "outcome", "estimated"])
COST = Counter("switchyard_cost_usd_total", "USD recorded in the usage log, at the registry's prices",
               ["tenant", "model"])
EMBEDDING_COST = Counter("embedding_cost_usd_total", "USD of embedding calls recorded in the usage log", ["model"])

_FEMTO = 1e-15


def observe_committed(appended: Sequence[Positioned], book: PriceBook | None) -> None:
    """Count what one committed batch added to the log (grouped first: one label lookup per group)."""
    groups: dict[tuple[str, str, str, bool, bool], list[int]] = {}
    for _, event in appended:
        if type(event) is not UsageRecorded:
            continue
        key = (event.tenant_id, event.model, event.outcome, event.estimated, "embed" in event.api)
        group = groups.get(key)
        if group is None:
            groups[key] = [event.input_tokens, event.output_tokens, 1, event.cached_tokens]
        else:
            group[0] += event.input_tokens
            group[1] += event.output_tokens
            group[2] += 1
            group[3] += event.cached_tokens
    for (tenant, model, outcome, estimated, embedding), (tokens_in, tokens_out, calls, cached) in groups.items():
        if tokens_in > 0:       # a counter only grows: a negative count (no gateway of ours sends one) must not
            TOKENS.labels(tenant, model, "input").inc(tokens_in)        # raise after the batch was acknowledged
        if tokens_out > 0:
            TOKENS.labels(tenant, model, "output").inc(tokens_out)
        CALLS.labels(tenant, model, outcome, "true" if estimated else "false").inc(calls)
        price = book.price(tenant, model) if book is not None else None
        if price is not None:
            usd = sum(price.femto(tokens_in, tokens_out, cached)) * _FEMTO
            if usd <= 0:
                continue
            COST.labels(tenant, model).inc(usd)
            if embedding:
                EMBEDDING_COST.labels(model).inc(usd)
