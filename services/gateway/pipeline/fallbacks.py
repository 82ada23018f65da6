"""The one fallback policy: which models may serve a call instead of the one asked for, and in what order.

A model's *designated* fallbacks for a tenant are the tenant's choice for it (its assignment's
`fallback_model`), then the model's own. Two paths use them:

- failover, when every endpoint of a model failed: the first designated fallback, then that
  model's first designated fallback, and so on (`chain`, resolved once per call into the route plan);
- quotas, when a call would go over a limit: every designated fallback, then the tenant's other
  models of the same kind by assignment priority (`suggestions`: the 402 body's `suggested_models`,
  and what `fallback_on_quota` reserves for, in that order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts.events import ModelRegistered


class Servable(Protocol):
    """A model resolved for a tenant (routing's Target)."""

    @property
    def model(self) -> ModelRegistered: ...


T = TypeVar("T", bound=Servable)


class Fallbacks:
    """The policy over the local catalog; the router and the quota client share one instance."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def designated(self, tenant_id: str, model_id: str) -> list[str]:
        """The names a tenant and the registry gave as this model's fallback, the tenant's first."""
        assignment = self.catalog.assignments.get(tenant_id, {}).get(model_id)
        model = self.catalog.models.get(model_id)
        names = [assignment.fallback_model if assignment is not None else "",
                 model.fallback_model if model is not None else ""]
        return [name for name in names if name]

    def chain(self, tenant_id: str, model_id: str, target: Callable[[str], T | None]) -> tuple[list[T], str]:
        """What failover tries after a model, in order: each model's first designated fallback, until there is
        none, one repeats, or one cannot be served (`target(name)` is None: that name is returned too, for
        the log; '' otherwise)."""
        seen = {model_id}
        found: list[T] = []
        while names := self.designated(tenant_id, model_id):
            item = target(names[0])
            if item is None:
                return found, names[0]
            model_id = item.model.model_id
            if model_id in seen:
                break
            seen.add(model_id)
            found.append(item)
        return found, ""

    def suggestions(self, tenant_id: str, model_id: str) -> list[str]:
        """The models to use instead when a quota refuses, best first: the designated fallbacks, then the
        tenant's other models of the same kind by assignment priority; only those it may use and some
        endpoint serves."""
        catalog = self.catalog
        model = catalog.models.get(model_id)
        assigned = catalog.assignments.get(tenant_id, {})
        chain: list[str] = []
        for name in self.designated(tenant_id, model_id):
            found = catalog.resolve_model(name)
            if found and found != model_id and found not in chain:
                chain.append(found)
        kind = model.kind if model else "chat"
        others = [m.model_id for m in catalog.models_for(tenant_id)
                  if m.kind == kind and m.model_id != model_id and m.model_id not in chain]
        others.sort(key=lambda mid: (-(assigned[mid].priority if mid in assigned else 0), mid))
        return [mid for mid in chain + others
                if catalog.tenant_may_use(tenant_id, mid) and catalog.endpoints_serving(mid)]
