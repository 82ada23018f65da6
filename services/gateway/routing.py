"""Pick the endpoints that may serve one call, from the local catalog, best first."""

from __future__ import annotations

from collections import defaultdict

from libs.catalog.state import Catalog, upstream_name
from libs.contracts.events import EndpointRegistered, ModelRegistered
from services.gateway.errors import ModelNotFound


class Route:
    """One candidate: an endpoint and the name it knows the model by."""

    __slots__ = ("endpoint", "upstream_model")

    def __init__(self, endpoint: EndpointRegistered, upstream_model: str) -> None:
        self.endpoint = endpoint
        self.upstream_model = upstream_model


class Router:
    """Candidate selection plus the per endpoint x model in-flight counters it balances on."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.inflight: defaultdict[tuple[str, str], int] = defaultdict(int)
        self._cache: dict[tuple[str, str], tuple[ModelRegistered, list[Route]]] = {}
        self._cache_version = -1

    def resolve(self, tenant_id: str, requested: str) -> tuple[ModelRegistered, list[Route]]:
        """The model and every endpoint serving it for this tenant (priority order), or ModelNotFound."""
        if self._cache_version != self.catalog.version:
            self._cache.clear()
            self._cache_version = self.catalog.version
        hit = self._cache.get((tenant_id, requested))
        if hit is not None:
            return hit
        model_id = self.catalog.resolve_model(requested)
        if model_id is None or not self.catalog.tenant_may_use(tenant_id, model_id):
            raise ModelNotFound(requested)
        model = self.catalog.models[model_id]
        routes = [Route(e, upstream_name(e, model)) for e in self.catalog.endpoints_serving(model_id)]
        if not routes:
            raise ModelNotFound(requested)
        self._cache[(tenant_id, requested)] = (model, routes)
        return model, routes

    def order(self, model: ModelRegistered, routes: list[Route]) -> list[Route]:
        """Highest priority first, then least in flight; endpoints at their cap go last."""
        if len(routes) == 1:
            return routes
        inflight = self.inflight
        mid = model.model_id

        def rank(route: Route) -> tuple[int, int, int]:
            e = route.endpoint
            busy = inflight[(e.endpoint_id, mid)]
            capped = 1 if e.max_concurrent and busy >= e.max_concurrent else 0
            return (capped, -e.priority, busy)

        return sorted(routes, key=rank)

    def acquire(self, endpoint_id: str, model_id: str) -> None:
        self.inflight[(endpoint_id, model_id)] += 1

    def release(self, endpoint_id: str, model_id: str) -> None:
        self.inflight[(endpoint_id, model_id)] -= 1
