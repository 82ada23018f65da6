"""Pick the endpoints that may serve one call, from the local catalog and breaker state, best first."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Protocol

from switchyard_gateway.catalog.rules import normalise_model
from switchyard_gateway.catalog.state import Catalog, upstream_name
from switchyard_gateway.contracts.events import EndpointRegistered, ModelRegistered
from switchyard_gateway.services.gateway.edge.errors import ModelNotFound, UpstreamError


class Circuits(Protocol):
    """What routing needs of the breaker state the router publishes (services/gateway/state/circuits.py)."""

    def state(self, endpoint_id: str) -> str: ...
    def allows(self, endpoint_id: str) -> bool: ...
    def loaded(self, endpoint_id: str) -> frozenset[str]: ...
    def release(self, endpoint_id: str) -> None: ...


class Route:
    """One candidate: an endpoint and the name it knows the model by."""

    __slots__ = ("endpoint", "upstream_model")

    def __init__(self, endpoint: EndpointRegistered, upstream_model: str) -> None:
        self.endpoint = endpoint
        self.upstream_model = upstream_model


class Plan:
    """Candidates ready now (best first), those at their concurrency cap, and why each other was skipped."""

    __slots__ = ("ready", "capped", "skipped")

    def __init__(self) -> None:
        self.ready: list[Route] = []
        self.capped: list[Route] = []
        self.skipped: dict[str, str] = {}

    def error(self) -> UpstreamError:
        """Why nothing could be tried: every breaker open (503), or every endpoint busy (503)."""
        if self.capped:
            return UpstreamError("Every endpoint for this model is at its concurrency limit", status=503,
                                 code="capacity", headers={"retry-after": "1"})
        if self.skipped and all(reason.startswith("circuit") for reason in self.skipped.values()):
            return UpstreamError("Every endpoint for this model is unavailable (circuit open); retry shortly",
                                 status=503, code="circuit_open", headers={"retry-after": "5"})
        return UpstreamError("No endpoint could serve the request")


class Router:
    """Candidate selection plus the per endpoint x model in-flight counters it balances on."""

    def __init__(self, catalog: Catalog, circuits: Circuits | None = None) -> None:
        self.catalog = catalog
        self.circuits = circuits
        self.inflight: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._released: dict[str, asyncio.Event] = {}
        self._cache: dict[tuple[str, str], tuple[ModelRegistered, list[Route]]] = {}
        self._cache_version = -1

    def resolve(self, tenant_id: str, requested: str) -> tuple[ModelRegistered, list[Route]]:
        """The model and every endpoint serving it for this tenant (priority order), or ModelNotFound.

        `default` names the tenant's default model.
        """
        if self._cache_version != self.catalog.version:
            self._cache.clear()
            self._cache_version = self.catalog.version
        hit = self._cache.get((tenant_id, requested))
        if hit is not None:
            return hit
        model_id = self._default_model(tenant_id) if requested == "default" else self.catalog.resolve_model(requested)
        if model_id is None or not self.catalog.tenant_may_use(tenant_id, model_id):
            raise ModelNotFound(requested)
        model = self.catalog.models[model_id]
        routes = [Route(e, upstream_name(e, model)) for e in self.catalog.endpoints_serving(model_id)]
        if not routes:
            raise ModelNotFound(requested)
        self._cache[(tenant_id, requested)] = (model, routes)
        return model, routes

    def _default_model(self, tenant_id: str) -> str | None:
        assigned = [a for a in self.catalog.assignments.get(tenant_id, {}).values() if a.enabled and a.is_default]
        return max(assigned, key=lambda a: a.priority).model_id if assigned else None

    def fallback_for(self, tenant_id: str, model: ModelRegistered) -> str:
        """The tenant's fallback for a model if it set one, else the model's own ('' for none)."""
        assignment = self.catalog.assignments.get(tenant_id, {}).get(model.model_id)
        return (assignment.fallback_model if assignment and assignment.fallback_model else "") \
            or model.fallback_model

    def plan(self, model: ModelRegistered, routes: list[Route], exclude: set[str]) -> Plan:
        """Order the candidates: breakers open skipped; at the cap set aside; then highest priority,
        model already loaded, least in flight."""
        plan = Plan()
        circuits = self.circuits
        mid = model.model_id
        inflight = self.inflight
        for route in routes:
            e = route.endpoint
            eid = e.endpoint_id
            if eid in exclude:
                plan.skipped[eid] = "already tried"
            elif circuits is not None and circuits.state(eid) == "open":
                plan.skipped[eid] = "circuit open"
            elif e.max_concurrent and inflight[(eid, mid)] >= e.max_concurrent:
                plan.capped.append(route)
                plan.skipped[eid] = f"at its concurrency cap ({inflight[(eid, mid)]}/{e.max_concurrent})"
            else:
                plan.ready.append(route)
        if len(plan.ready) > 1:
            plan.ready.sort(key=lambda r: self._rank(r, mid))
        return plan

    def _rank(self, route: Route, model_id: str) -> tuple[int, int, int]:
        e = route.endpoint
        loaded = self.circuits.loaded(e.endpoint_id) if self.circuits is not None else frozenset()
        cold = 0 if (normalise_model(route.upstream_model) in loaded or normalise_model(model_id) in loaded) else 1
        return (-e.priority, cold, self.inflight[(e.endpoint_id, model_id)])

    def acquire(self, endpoint_id: str, model_id: str) -> None:
        self.inflight[(endpoint_id, model_id)] += 1

    def release(self, endpoint_id: str, model_id: str) -> None:
        self.inflight[(endpoint_id, model_id)] -= 1
        event = self._released.pop(model_id, None)
        if event is not None:
            event.set()

    async def wait_for_release(self, model_id: str, timeout_s: float) -> bool:
        """Wait until some endpoint finishes a call of this model (a slot may be free), or time out."""
        event = self._released.get(model_id)
        if event is None:
            event = self._released[model_id] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
            return True
        except asyncio.TimeoutError:
            return False

    def inflight_counts(self) -> dict[str, dict[str, int]]:
        """Calls in flight in this gateway per endpoint and model (every configured pair, zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for endpoint in self.catalog.endpoints.values():
            out[endpoint.endpoint_id] = {model: 0 for model in endpoint.models}
        for (endpoint_id, model), count in list(self.inflight.items()):
            out.setdefault(endpoint_id, {})[model] = count
        return out

    def describe(self, plan: Plan) -> dict[str, Any]:
        """The plan for a debug log line: candidates in order with their load, and skip reasons."""
        return {
            "candidates": [f"{r.endpoint.endpoint_id}(p{r.endpoint.priority})" for r in plan.ready],
            "skipped": plan.skipped,
        }
