"""The usage folds are pure: same events in, same totals out, in any batching."""

from __future__ import annotations

from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.services.metering.projections import Counts, fold_tenant_counts, fold_token_counts


def usage(endpoint: str, model: str, tenant: str, tokens_in: int, tokens_out: int, outcome: str = "ok") -> UsageRecorded:
    return UsageRecorded(request_id="r", tenant_id=tenant, key_id="k", model=model, api="openai.chat",
                         outcome=outcome, status=200, input_tokens=tokens_in, output_tokens=tokens_out,  # type: ignore[arg-type]
                         endpoint_id=endpoint)


EVENTS = [
    usage("ep-1", "llama3.2", "acme", 3, 10),
    usage("ep-2", "llama3.2", "acme", 4, 20),
    usage("ep-1", "llama3.2", "beta", 5, 30),
    usage("ep-1", "nomic", "beta", 7, 0),
    usage("", "llama3.2", "acme", 0, 0, outcome="error"),
]


def test_token_counts_sum_per_endpoint_and_model() -> None:
    counts = fold_token_counts(EVENTS)
    assert counts[("ep-1", "llama3.2")] == Counts(input_tokens=8, output_tokens=40, calls=2)
    assert counts[("ep-2", "llama3.2")] == Counts(input_tokens=4, output_tokens=20, calls=1)
    assert counts[("", "llama3.2")] == Counts(calls=1, errors=1)


def test_tenant_counts_sum_per_tenant_and_model_and_count_errors() -> None:
    counts = fold_tenant_counts(EVENTS)
    assert counts[("acme", "llama3.2")] == Counts(input_tokens=7, output_tokens=30, calls=3, errors=1)
    assert counts[("beta", "nomic")] == Counts(input_tokens=7, output_tokens=0, calls=1)


def test_folding_in_batches_equals_folding_at_once() -> None:
    whole = fold_token_counts(EVENTS)
    merged: dict = {}
    for batch in (EVENTS[:2], EVENTS[2:3], EVENTS[3:]):
        for key, c in fold_token_counts(batch).items():
            total = merged.setdefault(key, Counts())
            total.input_tokens += c.input_tokens
            total.output_tokens += c.output_tokens
            total.calls += c.calls
            total.errors += c.errors
    assert merged == whole


def test_other_event_types_are_ignored() -> None:
    from switchyard_gateway.contracts.events import TenantCreated

    assert fold_token_counts([TenantCreated(tenant_id="acme")]) == {}


def test_series_and_cost_fold_the_same_in_any_batching() -> None:
    from datetime import UTC, datetime, timedelta

    from switchyard_gateway.contracts.events import ModelRegistered
    from switchyard_gateway.services.metering.folds import fold_series, usage_facts
    from switchyard_gateway.services.metering.pricing import PriceBook, fold_cost

    start = datetime(2026, 1, 1, 23, 58, 30, tzinfo=UTC)
    events: list = [ModelRegistered(model_id="llama3.2", input_price_per_1m=0.05, output_price_per_1m=0.1)]
    for i, e in enumerate(EVENTS * 20):
        events.append(e.__class__(**{**{f: getattr(e, f) for f in e.__struct_fields__},
                                     "occurred_at": start + timedelta(seconds=17 * i)}))
        if i == 40:
            events.append(ModelRegistered(model_id="llama3.2", input_price_per_1m=0.07, output_price_per_1m=0.3))
    whole_minutes, whole_days = fold_series(usage_facts(events))
    whole_cost = fold_cost(usage_facts(events), PriceBook())
    minutes: dict = {}
    days: dict = {}
    cost: dict = {}
    book = PriceBook()
    for i in range(0, len(events), 7):
        fold_series(usage_facts(events[i:i + 7]), None, minutes, days)
        fold_cost(usage_facts(events[i:i + 7]), book, cost)
    assert (minutes, days, cost) == (whole_minutes, whole_days, whole_cost)
    assert len(whole_days) > 1 and sum(c.calls for c in whole_minutes.values()) == len(EVENTS) * 20


def test_prices_are_exact_integers_and_costs_sum_without_rounding() -> None:
    from switchyard_gateway.services.metering.pricing import nano, usd

    assert nano(0.05) == 50_000_000 and nano(0.1 + 0.2) == 300_000_000
    price = nano(0.1)
    femto = sum(3 * price for _ in range(333_333))          # 3 tokens at 0.1 USD per 1M, many times
    assert str(usd(femto)) == "0.099999900000000"


def test_minutes_before_the_trim_point_count_in_days_only() -> None:
    from datetime import UTC, datetime

    from switchyard_gateway.services.metering.folds import fold_series, usage_facts

    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    event = UsageRecorded(request_id="r", tenant_id="t", key_id="k", model="m", api="openai.chat", outcome="ok",
                          status=200, input_tokens=1, output_tokens=2, occurred_at=at)
    minutes, days = fold_series(usage_facts([event]), trimmed_before=int(at.timestamp()) + 60)
    assert minutes == {} and sum(c.calls for c in days.values()) == 1


def test_cached_tokens_are_summed_and_priced_at_the_cached_price_where_one_is_set() -> None:
    from datetime import UTC, datetime

    from switchyard_gateway.contracts.events import ModelRegistered, TenantModelAssigned
    from switchyard_gateway.services.metering.folds import usage_facts
    from switchyard_gateway.services.metering.pricing import PriceBook, cost_of, fold_cost, usd

    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)

    def call(tenant: str, cached: int) -> UsageRecorded:
        return UsageRecorded(request_id="r", tenant_id=tenant, key_id="k", model="/models/x.gguf", api="openai.chat",
                             outcome="ok", status=200, input_tokens=100, output_tokens=10, cached_tokens=cached,
                             endpoint_id="ep", occurred_at=at)

    events = [call("acme", 96), call("beta", 96), call("acme", 0)]
    assert fold_token_counts(events)[("ep", "/models/x.gguf")].cached_tokens == 192
    assert fold_tenant_counts(events)[("acme", "/models/x.gguf")] == Counts(
        input_tokens=200, output_tokens=20, calls=2, cached_tokens=96)
    book = PriceBook()
    for registry_event in (
            ModelRegistered(model_id="/models/x.gguf", input_price_per_1m=1.0, output_price_per_1m=2.0,
                            cached_input_price_per_1m=0.1),
            TenantModelAssigned(tenant_id="beta", model_id="/models/x.gguf", input_price_per_1m=3.0)):
        book.apply(registry_event)
    cost = fold_cost(usage_facts(events), book)
    day = at.toordinal() - datetime(1970, 1, 1).toordinal()
    # acme: 4 tokens at 1.0, 96 at 0.1, then 100 at 1.0; output 20 at 2.0 (femto-USD = tokens x nano-USD per 1M)
    assert cost[(day, "acme", "/models/x.gguf")].input_femto == (4 + 100) * 10**9 + 96 * 10**8
    assert cost[(day, "acme", "/models/x.gguf")].output_femto == 20 * 2 * 10**9
    # beta overrides the input price only: its cached tokens keep the model's cached price
    assert cost[(day, "beta", "/models/x.gguf")].input_femto == 4 * 3 * 10**9 + 96 * 10**8
    assert cost_of(events[0], book) == usd(4 * 10**9 + 96 * 10**8 + 10 * 2 * 10**9)
    book.apply(ModelRegistered(model_id="/models/x.gguf", input_price_per_1m=1.0, output_price_per_1m=2.0))
    assert cost_of(events[0], book) == usd(100 * 10**9 + 10 * 2 * 10**9)     # no cached price: the input price
