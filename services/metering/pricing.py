"""Cost: the registry's prices folded in log order, and each usage event priced by them.

Prices are kept as exact integers, nano-USD per 1M tokens, so that a call's
cost is `tokens * price` femto-USD (1e-15 USD), an integer: sums are exact and
the same in any batching, and a rebuild equals the live figures to the last digit.
A tenant's assignment may override a model's prices; a model keeps its last
prices after it is removed (calls in flight then are still priced). Input tokens the
upstream served from its prompt cache cost the cached-input price when one is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec

from switchyard_gateway.contracts.events import ModelRegistered, TenantModelAssigned, TenantModelUnassigned
from switchyard_gateway.services.metering.folds import Segment

FEMTO = Decimal(1).scaleb(-15)


def nano(usd_per_1m: float | None) -> int | None:
    """A price in USD per 1M tokens as whole nano-USD per 1M tokens (0.05 -> 50_000_000)."""
    if usd_per_1m is None:
        return None
    return int((Decimal(repr(float(usd_per_1m))) * 1_000_000_000).to_integral_value())


def usd(femto_usd: int) -> Decimal:
    """Femto-USD as an exact Decimal of USD."""
    return Decimal(femto_usd).scaleb(-15)


@dataclass
class ModelPrice:
    input_nano: int
    output_nano: int
    aliases: tuple[str, ...] = ()
    cached_nano: int | None = None          # None: cached input tokens cost the input price


class Price(NamedTuple):
    """What one tenant pays for one model, nano-USD per 1M tokens (so femto-USD per token)."""

    input_nano: int
    output_nano: int
    cached_nano: int

    def femto(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> tuple[int, int]:
        """(input, output) cost in femto-USD; the cached part of the input at the cached price."""
        cached = min(max(cached_tokens, 0), input_tokens)
        return (input_tokens - cached) * self.input_nano + cached * self.cached_nano, output_tokens * self.output_nano


@dataclass
class PriceBook:
    """Prices per model and per tenant override, as the registry's events set them."""

    models: dict[str, ModelPrice] = field(default_factory=dict)
    overrides: dict[tuple[str, str], tuple[int | None, int | None, int | None]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    changed_models: set[str] = field(default_factory=set)
    changed_overrides: set[tuple[str, str]] = field(default_factory=set)

    def apply(self, event: Any) -> bool:
        """Fold one registry event; True if it changed a price."""
        match event:
            case ModelRegistered():
                old = self.models.get(event.model_id)
                if old is not None:
                    for alias in old.aliases:
                        self.aliases.pop(alias, None)
                self.models[event.model_id] = ModelPrice(
                    nano(event.input_price_per_1m) or 0, nano(event.output_price_per_1m) or 0, tuple(event.aliases),
                    nano(event.cached_input_price_per_1m))
                for alias in event.aliases:
                    self.aliases[alias] = event.model_id
                self.changed_models.add(event.model_id)
                return True
            case TenantModelAssigned():
                key = (event.tenant_id, event.model_id)
                self.overrides[key] = (nano(event.input_price_per_1m), nano(event.output_price_per_1m),
                                       nano(event.cached_input_price_per_1m))
                self.changed_overrides.add(key)
                return True
            case TenantModelUnassigned():
                key = (event.tenant_id, event.model_id)
                self.overrides.pop(key, None)
                self.changed_overrides.add(key)
                return True
        return False

    def price(self, tenant_id: str, model: str) -> Price | None:
        """Nano-USD per 1M tokens for this tenant and model; None if the model has no price. Cached input
        costs the assignment's cached price, else the model's, else the input price."""
        model_id = model if model in self.models else self.aliases.get(model)
        if model_id is None:
            bare = model.removesuffix(":latest")
            model_id = bare if bare in self.models else self.aliases.get(bare)
            if model_id is None:
                return None
        base = self.models[model_id]
        inp, out, cached = self.overrides.get((tenant_id, model_id), (None, None, None))
        inp = base.input_nano if inp is None else inp
        cached = base.cached_nano if cached is None else cached
        return Price(inp, base.output_nano if out is None else out, inp if cached is None else cached)


class Cost(msgspec.Struct):
    """Cost totals for one (day, tenant, model), in femto-USD."""

    calls: int = 0
    input_femto: int = 0
    output_femto: int = 0
    estimated_femto: int = 0
    unpriced_calls: int = 0


CostKey = tuple[int, str, str]      # (UTC day as epoch days, tenant, model)


def fold_cost(segments: Iterable[Segment], book: PriceBook, into: dict[CostKey, Cost] | None = None) -> dict[CostKey, Cost]:
    """Price usage facts with the book as it stands where they occur in the log; registry events move the book."""
    out: dict[CostKey, Cost] = {} if into is None else into
    for segment in segments:
        if type(segment) is not dict:
            book.apply(segment)
            continue
        for (minute, tenant, _, model, _, estimated), (tokens_in, tokens_out, calls, cached) in segment.items():
            key = (minute // 86400, tenant, model)
            c = out.get(key)
            if c is None:
                c = out[key] = Cost()
            c.calls += calls
            price = book.price(tenant, model)
            if price is None:
                c.unpriced_calls += calls
                continue
            input_femto, output_femto = price.femto(tokens_in, tokens_out, cached)
            c.input_femto += input_femto
            c.output_femto += output_femto
            if estimated:
                c.estimated_femto += input_femto + output_femto
    return out


def cost_of(event: Any, book: PriceBook) -> Decimal:
    """One usage event's cost in USD (0 when its model has no price)."""
    price = book.price(event.tenant_id, event.model)
    if price is None:
        return Decimal(0)
    return usd(sum(price.femto(event.input_tokens, event.output_tokens, event.cached_tokens)))
