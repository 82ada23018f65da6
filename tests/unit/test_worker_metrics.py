"""One scrape of every worker: what adds up is added, how long something waited is the longest wait, the rest is
the answering worker's own."""

from __future__ import annotations

from switchyard_gateway.contracts.messages import MetricFamily, MetricSample
from switchyard_gateway.services.gateway.worker_metrics import merge


def gauges(pending: float, waiting: float, breaker: float) -> list[MetricFamily]:
    return [MetricFamily("switchyard_usage_events_pending", "gauge", "", "",
                         [MetricSample("switchyard_usage_events_pending", {}, pending)]),
            MetricFamily("switchyard_usage_waiting_seconds", "gauge", "", "",
                         [MetricSample("switchyard_usage_waiting_seconds", {}, waiting)]),
            MetricFamily("switchyard_circuit_state", "gauge", "", "",
                         [MetricSample("switchyard_circuit_state", {"endpoint": "a"}, breaker)])]


def test_pending_events_add_up_and_the_longest_wait_is_kept() -> None:
    """Summed, three workers' waits of 0, 75 and 12 s would read 87 s, a wait no worker's events had."""
    merged = {m.name: [s.value for s in m.samples] for m in merge(gauges(3, 0.0, 1), [gauges(5, 75.0, 0),
                                                                                     gauges(1, 12.0, 0)])}
    assert merged == {"switchyard_usage_events_pending": [9], "switchyard_usage_waiting_seconds": [75.0],
                      "switchyard_circuit_state": [1]}
