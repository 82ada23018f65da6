"""Route a call from local state: its route plan (model, endpoints, fallback chain), then its endpoints best first."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, NamedTuple, Protocol

from switchyard_gateway.catalog.rules import normalise_model
from switchyard_gateway.catalog.state import Catalog, upstream_name
from switchyard_gateway.contracts.events import EndpointRegistered, ModelRegistered
from switchyard_gateway.services.gateway.edge.errors import ModelNotConfigured, ModelNotFound, UpstreamError
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.shared_inflight import SharedInflight
from switchyard_gateway.services.gateway.pipeline.stalls import Stalls

SHARED_LOOK_S = 0.02       # a call waiting for a capped endpoint looks again this often when workers share the cap


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


class Target(NamedTuple):
    """A model and every endpoint serving it for the tenant (priority order)."""

    model: ModelRegistered
    routes: list[Route]


class RoutePlan:
    """Where one call may go: the model asked for, then its fallback chain; resolved once per call."""

    __slots__ = ("targets", "unknown_fallback")

    def __init__(self, targets: tuple[Target, ...], unknown_fallback: str = "") -> None:
        self.targets = targets                    # the model asked for first, then the fallback chain
        self.unknown_fallback = unknown_fallback  # a fallback named past the chain's end that cannot serve

    @property
    def model(self) -> ModelRegistered:
        return self.targets[0].model


class Candidates:
    """A model's endpoints ready now (best first), those at their concurrency cap, and why each other was skipped."""

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
    """Route plans from the local catalog, candidate ordering, and the per endpoint x model in-flight counters."""

    def __init__(self, catalog: Catalog, fallbacks: Fallbacks, circuits: Circuits | None = None,
                 shared: SharedInflight | None = None) -> None:
        self.catalog = catalog
        self.fallbacks = fallbacks
        self.circuits = circuits
        self.shared = shared                      # the counts of every worker, when the gateway runs several
        self.inflight: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.stalls = Stalls()                    # endpoints whose answers stopped starting (this worker's view)
        self._released: dict[str, asyncio.Event] = {}
        self._plans: dict[tuple[str, str], RoutePlan] = {}
        self._plans_version = -1

    def resolve(self, tenant_id: str, requested: str) -> RoutePlan:
        """The route plan of a call: the model (id, alias, or `default` for the tenant's default model) with
        the endpoints serving it, then its fallback chain; ModelNotConfigured if the model exists but the tenant
        may not use it (or has no default), ModelNotFound if no endpoint serves it.

        Plans are kept until the catalog changes, so this is one dict lookup per call.
        """
        if self._plans_version != self.catalog.version:
            self._plans.clear()
            self._plans_version = self.catalog.version
        plan = self._plans.get((tenant_id, requested))
        if plan is None:
            target = self._target(tenant_id, requested)
            if target is None:
                raise self._refusal(tenant_id, requested)
            chain, unknown = self.fallbacks.chain(tenant_id, target.model.model_id,
                                                  lambda name: self._target(tenant_id, name))
            plan = self._plans[(tenant_id, requested)] = RoutePlan((target, *chain), unknown)
        return plan

    def _target(self, tenant_id: str, requested: str) -> Target | None:
        model_id = self._default_model(tenant_id) if requested == "default" else self.catalog.resolve_model(requested)
        if model_id is None or not self.catalog.tenant_may_use(tenant_id, model_id):
            return None
        model = self.catalog.models[model_id]
        routes = [Route(e, upstream_name(e, model)) for e in self.catalog.endpoints_serving(model_id)]
        return Target(model, routes) if routes else None

    def _refusal(self, tenant_id: str, requested: str) -> ModelNotFound:
        model_id = self._default_model(tenant_id) if requested == "default" else self.catalog.resolve_model(requested)
        if model_id is None and requested != "default":
            return ModelNotFound(requested)
        if model_id is None or not self.catalog.tenant_may_use(tenant_id, model_id):
            return ModelNotConfigured(requested, tenant_id)
        return ModelNotFound(requested)

    def _default_model(self, tenant_id: str) -> str | None:
        assigned = [a for a in self.catalog.assignments.get(tenant_id, {}).values() if a.enabled and a.is_default]
        return max(assigned, key=lambda a: a.priority).model_id if assigned else None

    def candidates(self, model_id: str, routes: list[Route], exclude: set[str]) -> Candidates:
        """Order a model's endpoints: breakers open skipped; at the cap set aside; then those not stalled
        (`stalls.py`), highest priority, model already loaded, least in flight."""
        found = Candidates()
        circuits = self.circuits
        mid = model_id
        inflight = self.inflight
        for route in routes:
            e = route.endpoint
            eid = e.endpoint_id
            if eid in exclude:
                found.skipped[eid] = "already tried"
            elif circuits is not None and circuits.state(eid) == "open":
                found.skipped[eid] = "circuit open"
            elif e.max_concurrent and (busy := self._busy(eid, mid, inflight)) >= e.max_concurrent:
                found.capped.append(route)
                found.skipped[eid] = f"at its concurrency cap ({busy}/{e.max_concurrent})"
            else:
                found.ready.append(route)
        if len(found.ready) > 1:
            now = time.monotonic()
            found.ready.sort(key=lambda r: self._rank(r, mid, now))
        return found

    def _rank(self, route: Route, model_id: str, now: float) -> tuple[bool, int, int, int]:
        e = route.endpoint
        loaded = self.circuits.loaded(e.endpoint_id) if self.circuits is not None else frozenset()
        cold = 0 if (normalise_model(route.upstream_model) in loaded or normalise_model(model_id) in loaded) else 1
        return (self.stalls.stalled(e.endpoint_id, now), -e.priority, cold, self.inflight[(e.endpoint_id, model_id)])

    def _busy(self, endpoint_id: str, model_id: str, inflight: defaultdict[tuple[str, str], int]) -> int:
        shared = self.shared
        return inflight[(endpoint_id, model_id)] if shared is None else shared.count(endpoint_id, model_id)

    def acquire(self, endpoint_id: str, model_id: str, cap: int = 0) -> bool:
        """Count a call in flight; False (nothing counted) if `cap` calls are already in flight in every worker."""
        shared = self.shared
        if shared is not None:
            if not cap:
                shared.add(endpoint_id, model_id)
            elif not shared.take(endpoint_id, model_id, cap):
                return False
        self.inflight[(endpoint_id, model_id)] += 1
        return True

    def release(self, endpoint_id: str, model_id: str) -> None:
        self.inflight[(endpoint_id, model_id)] -= 1
        if self.shared is not None:
            self.shared.give(endpoint_id, model_id)
        event = self._released.pop(model_id, None)
        if event is not None:
            event.set()

    async def wait_for_release(self, model_id: str, timeout_s: float) -> bool:
        """Wait until some endpoint finishes a call of this model (a slot may be free), or time out.

        Another worker's release wakes nobody here, so with several workers the wait ends after
        SHARED_LOOK_S at most, for the caller to look again."""
        if self.shared is not None:
            timeout_s = min(timeout_s, SHARED_LOOK_S)
        event = self._released.get(model_id)
        if event is None:
            event = self._released[model_id] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
            return True
        except asyncio.TimeoutError:
            return False

    def inflight_totals(self) -> dict[tuple[str, str], int]:
        """Calls in flight in this gateway (every worker of it) per (endpoint, model) that has had any."""
        shared = self.shared
        if shared is None:
            return dict(self.inflight)
        return {key: shared.count(*key) for key in list(self.inflight)}

    def inflight_counts(self) -> dict[str, dict[str, int]]:
        """Calls in flight in this gateway per endpoint and model (every configured pair, zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for endpoint in self.catalog.endpoints.values():
            out[endpoint.endpoint_id] = {model: 0 for model in endpoint.models}
            if self.shared is not None:
                for model in endpoint.models:
                    out[endpoint.endpoint_id][model] = self.shared.count(endpoint.endpoint_id, model)
        for (endpoint_id, model), count in self.inflight_totals().items():
            out.setdefault(endpoint_id, {})[model] = count
        return out

    def describe(self, candidates: Candidates) -> dict[str, Any]:
        """Candidates for a debug log line: in order with their priority, and skip reasons."""
        return {
            "candidates": [f"{r.endpoint.endpoint_id}(p{r.endpoint.priority})" for r in candidates.ready],
            "skipped": candidates.skipped,
            "stalled": self.stalls.stalled_ids(),
        }
