"""The usage folds are pure: same events in, same totals out, in any batching."""

from __future__ import annotations

from libs.contracts.events import UsageRecorded
from services.metering.projections import Counts, fold_tenant_counts, fold_token_counts


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
    from libs.contracts.events import TenantCreated

    assert fold_token_counts([TenantCreated(tenant_id="acme")]) == {}
