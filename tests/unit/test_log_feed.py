"""The log's feed, without servers: runs become messages whose header names every position they hold."""

from __future__ import annotations

import msgspec

from switchyard_gateway.events.feed import messages_of, positions_of
from switchyard_gateway.services.metering.history import like_patterns, live_subjects, tenant_of


def test_a_run_too_large_for_one_message_goes_event_by_event() -> None:
    body = "[" + ",".join('{"type":"usage.recorded.v2","n":%d}' % i for i in range(3)) + "]"
    runs = [(10, 12, "usage.recorded.v2", "acme", body), (13, 13, "tenant.created.v1", None, '[{"x":1}]')]
    small = messages_of(runs, max_bytes=40)
    assert [(m[0], m[2], m[3]) for m in small] == [
        ("log.usage.recorded.v2.acme", 10, 10), ("log.usage.recorded.v2.acme", 11, 11),
        ("log.usage.recorded.v2.acme", 12, 12), ("log.tenant.created.v1._", 13, 13)]
    assert msgspec.json.decode(small[1][1]) == [{"type": "usage.recorded.v2", "n": 1}]
    assert [(m[2], m[3]) for m in messages_of(runs, max_bytes=10_000)] == [(10, 12), (13, 13)]


def test_positions_header() -> None:
    assert positions_of({"Switchyard-Log-Positions": "5-9"}) == (5, 9)
    assert positions_of({}) is None and positions_of(None) is None


def test_replay_subjects_patterns_and_live_filters() -> None:
    assert tenant_of("metering.replay.v1") is None and tenant_of("metering.replay.v1.acme") == "acme"
    assert like_patterns([]) is None
    assert like_patterns(["tenant.model_assigned"]) == ["tenant.model\\_assigned", "tenant.model\\_assigned.%"]
    assert "usage.recorded.v1" in like_patterns(["usage"])             # older versions, read upcast
    assert live_subjects(["usage", "tenant.created.v1"], "acme") == ["log.usage.*.*.acme", "log.tenant.created.v1.acme"]
    assert live_subjects(["usage"] * 64, None) == ["log.usage.*.*.*"]      # one filter per type, however often asked
    assert live_subjects([], None) == ["log.>"]
