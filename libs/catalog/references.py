"""How the models of a registry document resolve once it is applied over the registry: ids, aliases and
`:latest` names, and the fallback chains they form, for the registry and for each tenant."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from switchyard_gateway.catalog import rules


@dataclass
class Names:
    """Model names as the registry would hold them after the document: ids, and each alias with its model."""

    ids: set[str]
    owners: dict[str, str]

    def resolve(self, name: str) -> str | None:
        """A model id from a name or alias; `:latest` is the same model (as `Catalog.resolve_model`)."""
        return rules.resolve_model_name(name, self.ids, self.owners)


@dataclass
class Fallbacks:
    """The name each model falls back to first, as failover follows them: a tenant's assignment's fallback,
    else the model's own ('' for none)."""

    models: dict[str, str]                      # model id -> its own fallback
    assigned: dict[str, dict[str, str]]         # tenant -> model id -> its assignment's fallback

    def view(self, tenant_id: str | None) -> dict[str, str]:
        if tenant_id is None:
            return self.models
        return {**self.models, **{mid: name for mid, name in self.assigned.get(tenant_id, {}).items() if name}}

    def tenants_with_their_own(self) -> list[str]:
        """Tenants whose chains differ from the registry's: some assignment names a fallback."""
        return sorted(tid for tid, by in self.assigned.items() if any(by.values()))


def cycles(starts: list[tuple[str, str | None, str]], names: Names, fallbacks: Fallbacks) -> list[tuple[str, str]]:
    """(path, sentence) for each fallback cycle that a start (path, tenant or None, model id) is on, each
    cycle once, at the first start on it. A model falling back to itself is not reported here (the
    reference itself is)."""
    found: list[tuple[str, str]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    views: dict[str | None, dict[str, str]] = {}
    for path, tenant_id, model_id in starts:
        view = views.setdefault(tenant_id, fallbacks.view(tenant_id))
        cycle = rules.fallback_cycle(model_id, lambda mid, view=view: view.get(mid, ""), names.resolve)
        if cycle is None or len(cycle) < 3:
            continue
        edges = frozenset(pairwise(cycle))
        if edges not in seen:
            seen.add(edges)
            found.append((path, rules.cycle_problem(cycle, tenant_id)))
    return found
