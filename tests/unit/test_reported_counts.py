"""Token counts an upstream reports are believed only when they can be true; the metering service counts what the
log holds without raising on any of it."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.services.gateway.translate.sse import SseTap
from switchyard_gateway.services.gateway.translate.wire import MAX_REPORTED_TOKENS, TokenCounts, believable
from switchyard_gateway.services.metering.metrics import observe_committed


@pytest.mark.parametrize("counts", [
    TokenCounts(-1000, -500), TokenCounts(7, -1), TokenCounts("7", 2), TokenCounts(7.0, 2), TokenCounts(True, 2),
    TokenCounts(2**63 - 1, 2), TokenCounts(10**30, 1), TokenCounts(MAX_REPORTED_TOKENS + 1, 0),
    TokenCounts(7, 2, -3), TokenCounts(7, None),
])
def test_counts_no_model_could_have_are_not_believed(counts: TokenCounts) -> None:
    assert believable(counts) is None


def test_true_counts_are_believed_and_a_cache_larger_than_the_prompt_is_held_to_it() -> None:
    assert believable(TokenCounts(7, 2, 3)) == (7, 2, 3)
    assert believable(TokenCounts(0, 0)) == (0, 0, 0)
    assert believable(TokenCounts(MAX_REPORTED_TOKENS, 1)) == (MAX_REPORTED_TOKENS, 1, 0)
    assert believable(TokenCounts(7, 2, 100)) == (7, 2, 7)
    assert believable(None) is None


@pytest.mark.parametrize("usage", [
    b'{"prompt_tokens": "7", "completion_tokens": 2, "total_tokens": 9}',
    b'{"prompt_tokens": 7, "completion_tokens": null, "total_tokens": "9"}',
    b'{"prompt_tokens": null, "completion_tokens": null, "total_tokens": null}',
])
def test_a_streams_usage_chunk_of_any_shape_does_not_raise_and_is_judged_later(usage: bytes) -> None:
    """A count as text raised TypeError inside the tap (a traceback per call); all-null usage was taken as 0/0."""
    tap = SseTap(keep_usage=False)
    tap.feed(b'data: {"choices": [], "usage": ' + usage + b'}\n\ndata: [DONE]\n\n')
    assert tap.done and believable(tap.usage) is None


def test_metering_counts_a_negative_count_as_nothing_instead_of_raising() -> None:
    """prometheus-client refuses to decrease a counter: metering raised after acknowledging the batch, and was
    restarted for every such event."""
    tenant = "negative-counts"

    def tokens(direction: str) -> float:
        return REGISTRY.get_sample_value("switchyard_metered_tokens_total",
                                         {"tenant": tenant, "model": "m", "direction": direction}) or 0.0

    event = UsageRecorded(request_id="r", tenant_id=tenant, key_id="k", model="m", api="openai.chat", outcome="ok",
                          status=200, input_tokens=-1000, output_tokens=5)
    observe_committed([(1, event)], None)
    assert tokens("input") == 0 and tokens("output") == 5
