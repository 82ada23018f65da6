"""The counter projection's pure fold: prices and time zones from the log, and the counter deltas of usage.

Live settlement and `switchyard replay quota` run the same fold over the same log
in the same order, so a usage event is priced and dated identically by both.
A call counts as a request unless it failed with no tokens (a refunded call), is
charged to the model that served it (a fallback model when one stepped in), and
is counted in the periods holding the moment it finished, in the tenant's zone.
A tenant's removal ends its counters: usage folded before it is dropped, and usage of a call
that finishes while the tenant is gone, or that began before the tenant was created again (a call
of the removed tenant whose usage reached the log late), counts nowhere, so a tenant created again
under the same id starts from nothing, however often the log is folded from position 0. A model's
removal ends every tenant's figures of that model the same way (the tenants' own totals keep its
calls): a model registered again under the id starts from nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects as s
from switchyard_gateway.contracts.events import (
    Event, ModelRegistered, ModelRemoved, TenantCreated, TenantRemoved, UsageRecorded,
)
from switchyard_gateway.quotas.limits import LimitsBook
from switchyard_gateway.quotas.periods import PERIODS, Keys, field, model_token, usd_nanos, zone

# what the fold reads: usage, limits (time zones), and the registry events that set prices and names
LEDGER_TYPES = frozenset({
    s.LIMITS_SET, s.MODEL_REGISTERED, s.MODEL_REMOVED, s.TENANT_MODEL_ASSIGNED, s.TENANT_MODEL_UNASSIGNED,
    s.TENANT_CREATED, s.TENANT_REMOVED,
})
PROJECTION_TYPES = LEDGER_TYPES | {s.USAGE_RECORDED}


def hold_name(request_id: str, event_id: object) -> str:
    """The name of one accepted call's quota hold: its request id (readable, but chosen by the client, who may send
    one id with many calls) and its usage event's id (the gateway's own, one per call), so no call's settlement or
    release ever frees another's hold."""
    return f"{request_id}/{event_id}"


class Settlement(NamedTuple):
    """What one usage event settles: its call's hold (`hold_name`) to the actual amounts."""

    hold: str
    tokens: int
    requests: int
    nanos: int


CounterKey = tuple[str, str]            # (hash key, field)


class Ledger:
    """Prices, model names and time zones as of the last event folded in."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.catalog = Catalog()
        self.limits = LimitsBook()
        self.gone: set[str] = set()       # tenants removed and not created since: their usage counts nowhere
        self.again: dict[str, datetime] = {}      # tenant created again after a removal -> when
        self.models_gone: set[str] = set()          # models removed and not registered since
        self.models_again: dict[str, datetime] = {}     # model registered again after a removal -> when

    def apply(self, event: Event) -> None:
        self.catalog.apply(event)
        self.limits.apply(event)
        match event:
            case TenantRemoved(tenant_id=tenant):
                self.gone.add(tenant)
            case TenantCreated(tenant_id=tenant) if tenant in self.gone:
                self.gone.discard(tenant)
                self.again[tenant] = event.occurred_at
            case ModelRemoved(model_id=model):
                self.models_gone.add(model)
            case ModelRegistered(model_id=model) if model in self.models_gone:
                self.models_gone.discard(model)
                self.models_again[model] = event.occurred_at

    def counts(self, event: UsageRecorded) -> bool:
        """Whether a call's usage counts toward its tenant: not while the tenant is gone, nor for a call that began
        before the tenant was created again (the removed tenant's, whose usage reached the log late)."""
        tenant = event.tenant_id
        if tenant in self.gone:
            return False
        again = self.again.get(tenant)
        return again is None or event.occurred_at - timedelta(milliseconds=event.duration_ms) >= again

    def counts_for_model(self, model: str, event: UsageRecorded) -> bool:
        """Whether a call's usage counts in its tenant's figures of the model that served it: not while the model
        is gone, nor for a call that began before the model was registered again (the removed model's)."""
        if model in self.models_gone:
            return False
        again = self.models_again.get(model)
        return again is None or event.occurred_at - timedelta(milliseconds=event.duration_ms) >= again

    def price(self, tenant_id: str, model_id: str) -> tuple[float, float, float | None]:
        """USD per million input, output and cached input tokens: the tenant's assignment price, else the
        model's; no cached price (None) means cached tokens cost the input price."""
        model = self.catalog.models.get(model_id)
        assignment = self.catalog.assignments.get(tenant_id, {}).get(model_id)
        inp = model.input_price_per_1m if model else 0.0
        out = model.output_price_per_1m if model else 0.0
        cached = model.cached_input_price_per_1m if model else None
        if assignment is not None:
            inp = assignment.input_price_per_1m if assignment.input_price_per_1m is not None else inp
            out = assignment.output_price_per_1m if assignment.output_price_per_1m is not None else out
            cached = assignment.cached_input_price_per_1m if assignment.cached_input_price_per_1m is not None \
                else cached
        return inp, out, cached

    def served_model(self, event: UsageRecorded) -> str:
        """The model that served the call (a fallback, if one did), by id: from the name the endpoint
        was asked for, else from the name the client asked for."""
        served = self.catalog.resolve_model(event.upstream_model) if event.upstream_model else None
        return served or self.catalog.resolve_model(event.model) or event.model

    def settle(self, event: UsageRecorded, totals: dict[CounterKey, list[int]]) -> Settlement:
        """Add a usage event's counts to `totals` ((key, field) -> [sum, expire_at]); return its settlement."""
        model = self.served_model(event)
        tokens = event.input_tokens + event.output_tokens
        # a failure that spent nothing is no request; nor is a cache hit (it holds no quota and is never refused)
        requests = 0 if event.cache_hit or (event.outcome != "ok" and tokens == 0) else 1
        inp, out, cached = self.price(event.tenant_id, model)
        nanos = usd_nanos(event.input_tokens, event.output_tokens, inp, out, event.cached_tokens, cached)
        tz = zone(self.limits.timezone(event.tenant_id))
        measures = (("tok", tokens), ("in", event.input_tokens), ("out", event.output_tokens),
                    ("cin", event.cached_tokens), ("req", requests), ("usd", nanos))
        per_model = self.counts_for_model(model, event)
        for period in PERIODS:
            key, _, expire = self.keys.period_counter(event.tenant_id, period, event.occurred_at, tz)
            for measure, value in measures:
                if value:
                    for name in (field(measure), field(measure, model)) if per_model else (field(measure),):
                        slot = totals.get((key, name))
                        if slot is None:
                            totals[(key, name)] = [value, expire]
                        else:
                            slot[0] += value
        return Settlement(hold_name(event.request_id, event.event_id), tokens, requests, nanos)

    def fold(self, events: Iterable[Event], totals: dict[CounterKey, list[int]],
             removed: set[str] | None = None, removed_models: set[str] | None = None) -> list[Settlement]:
        """Fold events in order: ledger events change prices and zones, usage events add to `totals`. A tenant's
        removal drops what `totals` holds of it and names it in `removed` (its counters, already stored, end
        there too); a gone tenant's calls settle their holds and count nowhere. A model's removal drops every
        tenant's fields of it from `totals` and names it in `removed_models`."""
        settled = []
        for event in events:
            if isinstance(event, UsageRecorded):
                settled.append(self.settle(event, totals if self.counts(event) else {}))
            else:
                self.apply(event)
                if isinstance(event, TenantRemoved):
                    ended = self.keys.tenant_prefixes(event.tenant_id)[0]
                    for counter in [counter for counter in totals if counter[0].startswith(ended)]:
                        del totals[counter]
                    if removed is not None:
                        removed.add(event.tenant_id)
                elif isinstance(event, ModelRemoved):
                    suffix = model_suffix(event.model_id)
                    for counter in [counter for counter in totals if counter[1].endswith(suffix)]:
                        del totals[counter]
                    if removed_models is not None:
                        removed_models.add(event.model_id)
        return settled


def model_suffix(model_id: str) -> str:
    """How every counter field of a model ends (`tok@llama3.2`, `req#sy_1a2b@llama3.2`)."""
    return f"@{model_token(model_id)}"
