"""The Grafana dashboard reads only metrics some service exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "switchyard.json"
_FUNCTIONS = {"sum", "by", "rate", "max", "histogram_quantile", "clamp_min", "le", "irate", "avg"}


def exported() -> set[str]:
    import switchyard_gateway.events.ingest  # noqa: F401 — consumer lag and commit metrics
    import switchyard_gateway.services.gateway.edge.ws  # noqa: F401 — WebSocket connections and closes
    import switchyard_gateway.services.gateway.metrics  # noqa: F401
    import switchyard_gateway.services.metering.metrics  # noqa: F401
    import switchyard_gateway.services.quota.metrics  # noqa: F401 — quota usage ratios, refreshed before each scrape
    import switchyard_gateway.services.router.board  # noqa: F401

    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 — prometheus_client keeps no public list
        for metric in collector.describe() if hasattr(collector, "describe") else []:
            names.add(metric.name)
            names.update(f"{metric.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum"))
    names.update(n for ns in REGISTRY._collector_to_names.values() for n in ns)  # noqa: SLF001
    return names | {"switchyard_inflight_calls_by_endpoint", "switchyard_circuit_state",   # read at scrape time
                    "embedding_model_availability"}


def test_every_dashboard_query_uses_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b((?:switchyard|embedding)_[a-z_]+)\b", e)}
    unknown = used - exported()
    assert unknown == set()
    assert {"embedding_requests_total", "embedding_request_duration_seconds_bucket", "embedding_tokens_total",
            "embedding_cost_usd_total", "embedding_quota_usage_ratio", "embedding_cache_hits_total"} <= used
    assert len(dashboard["panels"]) >= 15 and not (used & {f for f in _FUNCTIONS})
