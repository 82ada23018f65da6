"""The gateway's Prometheus metrics; label children are cached so the hot path pays one dict lookup."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from switchyard_gateway.contracts.events import UsageRecorded

if TYPE_CHECKING:                 # the pipeline counts its calls here: these are only read at scrape time
    from switchyard_gateway.catalog.state import Catalog
    from switchyard_gateway.services.gateway.pipeline.routing import Router
    from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher
    from switchyard_gateway.services.gateway.state.circuits import Circuits

EMBEDDING_APIS = frozenset({"openai.embeddings", "ollama.embed", "ollama.embeddings"})
# `status` of the embedding metrics is the outcome, as the embeddings services' dashboards query it
# (`embedding_requests_total{status="error"}`); `code` is the HTTP status the client saw.
SUCCESS, ERROR = "success", "error"
UNKNOWN_MODEL = "unknown"          # the label of a refused call whose model the catalog does not know
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)

REQUESTS = Counter("switchyard_requests_total", "Inference calls by API and HTTP status", ["api", "status"])
DURATION = Histogram("switchyard_request_duration_seconds", "Whole call as the gateway saw it", ["api"],
                     buckets=_LATENCY_BUCKETS)
OVERHEAD = Histogram("switchyard_gateway_overhead_seconds", "The gateway's own share of a call (added latency)",
                     ["api"], buckets=_OVERHEAD_BUCKETS)
TTFT = Histogram("switchyard_time_to_first_token_seconds", "Time to the first streamed byte", ["model"],
                 buckets=_LATENCY_BUCKETS)
TOKENS = Counter("switchyard_tokens_total", "Tokens by model and direction", ["model", "direction"])
EMBEDDING_REQUESTS = Counter("embedding_requests_total",
                             "Embedding calls by model, outcome (status: success or error) and HTTP status (code)",
                             ["model", "status", "code"])
EMBEDDING_DURATION = Histogram("embedding_request_duration_seconds", "Embedding call duration", ["model"],
                               buckets=_LATENCY_BUCKETS)
EMBEDDING_LATENCY = Histogram("embedding_latency_seconds", "Time an embedding call spent at its provider (upstream)",
                              ["model"], buckets=_LATENCY_BUCKETS)
ACTIVE_EMBEDDINGS = Gauge("active_embedding_requests", "Embedding calls this gateway is serving now "
                                                       "(HTTP and WebSocket)")
EMBEDDING_TOKENS = Counter("embedding_tokens_total", "Embedding input tokens", ["model"])
CACHE_REQUESTS = Counter("switchyard_cache_requests_total", "Response cache lookups", ["api", "model"])
CACHE_HITS = Counter("switchyard_cache_hits_total", "Calls answered from the response cache", ["api", "model"])
EMBEDDING_CACHE_HITS = Counter("embedding_cache_hits_total", "Embedding calls answered from the response cache",
                               ["model"])
INFLIGHT = Gauge("switchyard_inflight_calls", "Calls in flight in this gateway")
QUOTA_UNAVAILABLE = Counter("switchyard_quota_unavailable_total",
                            "Reservations Valkey could not make: let through (open), refused (closed), "
                            "or refused after a script error (error)", ["action"])
CONNECTIONS_SHED = Counter("switchyard_http_connections_shed_total",
                           "Client connections over the HTTP server's limit: the longest-idle one closed to make room "
                           "(idle_closed), or the new one answered 503 when none was idle (refused)", ["how"])
USAGE_PENDING = Gauge("switchyard_usage_events_pending", "Usage events in the journal that JetStream has not acknowledged yet")
USAGE_WAITING = Gauge("switchyard_usage_waiting_seconds", "How long usage events have been parked without JetStream "
                      "taking them all (0: none is parked); past SWITCHYARD_USAGE_STALL_S, /health is 503")


@lru_cache(maxsize=4096)
def _requests(api: str, status: int) -> Counter:
    return REQUESTS.labels(api, str(status))


@lru_cache(maxsize=64)
def _duration(api: str) -> tuple[Histogram, Histogram]:
    return DURATION.labels(api), OVERHEAD.labels(api)


@lru_cache(maxsize=4096)
def _tokens(model: str) -> tuple[Counter, Counter]:
    return TOKENS.labels(model, "input"), TOKENS.labels(model, "output")


def active_embeddings() -> int:
    """Embedding calls this gateway is serving now."""
    return int(sum(sample.value for metric in ACTIVE_EMBEDDINGS.collect() for sample in metric.samples))


def count_cache_lookup(api: str, model: str) -> None:
    CACHE_REQUESTS.labels(api, model).inc()


def count_cache_hit(api: str, model: str) -> None:
    CACHE_HITS.labels(api, model).inc()
    if api in EMBEDDING_APIS:
        EMBEDDING_CACHE_HITS.labels(model).inc()


def count_quota_unavailable(action: str) -> None:
    QUOTA_UNAVAILABLE.labels(action).inc()


def count_connection_shed(how: str) -> None:
    CONNECTIONS_SHED.labels(how).inc()


def count_request(api: str, status: int, model: str = "") -> None:
    """A call refused before it was accepted (no usage event): counted by its API and status."""
    _requests(api, status).inc()
    if api in EMBEDDING_APIS:
        EMBEDDING_REQUESTS.labels(_known(model), ERROR, str(status)).inc()


def _known(model: str) -> str:
    """A refused call's model as a label: the catalog's id for the name, else `unknown`. A name a client made up is
    no label: each would be a series of its own for the life of the process, served to every scrape (a member key
    sending a megabyte of random name per call grew a worker by 60 MB and /metrics to 120 MB in 60 calls)."""
    catalog = STATE.catalog
    found = catalog.resolve_model(model) if catalog is not None and model else None
    return found or UNKNOWN_MODEL


def observe_call(event: UsageRecorded, duration_s: float, overhead_s: float) -> None:
    """Everything one finished call contributes to the metrics."""
    _requests(event.api, event.status).inc()
    duration, overhead = _duration(event.api)
    duration.observe(duration_s)
    overhead.observe(overhead_s)
    tokens_in, tokens_out = _tokens(event.model)
    tokens_in.inc(event.input_tokens)
    tokens_out.inc(event.output_tokens)
    if event.stream and event.ttfb_ms is not None:
        TTFT.labels(event.model).observe(event.ttfb_ms / 1000)
    if event.api in EMBEDDING_APIS:
        ok = event.outcome == "ok" and event.status < 400
        EMBEDDING_REQUESTS.labels(event.model, SUCCESS if ok else ERROR, str(event.status)).inc()
        EMBEDDING_DURATION.labels(event.model).observe(duration_s)
        EMBEDDING_TOKENS.labels(event.model).inc(event.input_tokens)
        if event.endpoint_id:
            EMBEDDING_LATENCY.labels(event.model).observe(max(0.0, duration_s - overhead_s))


class StateCollector:
    """Read at scrape time from the gateway's own state, so the hot path pays nothing: calls in flight per
    endpoint and model, each endpoint's breaker as this gateway sees it (0 closed, 1 half-open, 2 open), and
    whether each embedding model can be served now."""

    CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}

    def __init__(self) -> None:
        self.router: Router | None = None
        self.circuits: Circuits | None = None
        self.catalog: Catalog | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        router, circuits, catalog = self.router, self.circuits, self.catalog
        if router is None or circuits is None or catalog is None:
            return
        inflight = GaugeMetricFamily("switchyard_inflight_calls_by_endpoint",
                                     "Calls in flight in this gateway per endpoint and model", labels=["endpoint", "model"])
        for (endpoint, model), count in router.inflight_totals().items():
            inflight.add_metric([endpoint, model], count)
        yield inflight
        breaker = GaugeMetricFamily("switchyard_circuit_state",
                                    "Breaker state per endpoint as this gateway follows it: 0 closed, 1 half-open, 2 open",
                                    labels=["endpoint"])
        for endpoint_id in list(catalog.endpoints):
            breaker.add_metric([endpoint_id], self.CIRCUIT_VALUES.get(circuits.state(endpoint_id), 0))
        yield breaker
        available = GaugeMetricFamily("embedding_model_availability",
                                      "1 when some endpoint serving the embedding model can take a call now (breaker "
                                      "not open, last probe answered), else 0", labels=["model"])
        for model_id, model in list(catalog.models.items()):
            if model.kind == "embedding":
                available.add_metric([model_id], 1 if model_available(catalog, circuits, model_id) else 0)
        yield available


def model_available(catalog: Catalog, circuits: Circuits, model_id: str) -> bool:
    """Whether some endpoint serving the model can take a call now: its breaker not open and its last probe
    (if it had one yet) answered."""
    for endpoint in catalog.endpoints_serving(model_id):
        probe = circuits.health(endpoint.endpoint_id)
        if circuits.state(endpoint.endpoint_id) != "open" and (probe is None or probe.get("ok")):
            return True
    return False


STATE = StateCollector()          # prometheus-client's registry is per process, and so is this gateway
REGISTRY.register(STATE)


def watch(router: Router, circuits: Circuits, catalog: Catalog, usage: UsagePublisher) -> None:
    """Let the scrape-time gauges read this gateway's router, breakers and usage queue."""
    STATE.router, STATE.circuits, STATE.catalog = router, circuits, catalog
    USAGE_PENDING.set_function(lambda: usage.pending)
    USAGE_WAITING.set_function(lambda: usage.waiting_s)
