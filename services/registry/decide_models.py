"""Decisions about models: registering and removing them, assigning them to tenants (no fallback chain may come
back to where it began), endpoints from templates, and the models probes discover on endpoints (see `decide`)."""

from __future__ import annotations

import msgspec

from switchyard_gateway.catalog import rules
from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.catalog.templates import TEMPLATES
from switchyard_gateway.contracts import events as ev
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.routing import EndpointModelsDiscovered
from switchyard_gateway.services.registry.checks import (
    check, check_duplicates, check_identifier, check_mode, check_model_name, fields_of, invalid, not_found, same,
)


def register_model(catalog: Catalog, command: m.RegisterModel, check_cycles: bool = True) -> list[ev.Event]:
    check_model_name(command.model_id, "model_id")
    check_mode(command, catalog.models.get(command.model_id), "Model", command.model_id, "model_id")
    owner = None if command.model_id in catalog.models else catalog.resolve_model(command.model_id)
    if owner is not None:           # a new model named like another's alias (or `x:latest` of x) would hide it
        raise invalid("CONFLICT", f"'{command.model_id}' already names model '{owner}'", "model_id", 409)
    check_duplicates(command.aliases, "aliases")
    check_duplicates(command.capabilities, "capabilities")
    for i, alias in enumerate(command.aliases):
        check_model_name(alias, f"aliases[{i}]")
        owner = alias if alias in catalog.models else catalog.aliases.get(alias)
        if alias == command.model_id or (owner is not None and owner != command.model_id):
            raise invalid("CONFLICT", f"'{alias}' already names model '{owner or alias}'", f"aliases[{i}]", 409)
    for name in ("input_price_per_1m", "output_price_per_1m", "cached_input_price_per_1m", "context_length"):
        if (getattr(command, name) or 0) < 0:
            raise invalid("VALIDATION_ERROR", f"{name} cannot be negative", name)
    _check_fallback(catalog, command.fallback_model, command.model_id)
    if check_cycles:
        refuse_cycles(catalog, model_starts(catalog, command.model_id), "fallback_model",
                      models={command.model_id: command.fallback_model})
    new = ev.ModelRegistered(**fields_of(command))
    return [] if same(catalog.models.get(command.model_id), new) else [new]


def _check_fallback(catalog: Catalog, fallback: str, model_id: str) -> None:
    if not fallback:
        return
    if catalog.resolve_model(fallback) is None:
        raise not_found("MODEL_NOT_FOUND", "Fallback model", fallback, "fallback_model")
    if catalog.resolve_model(fallback) == model_id or fallback == model_id:
        raise invalid("VALIDATION_ERROR", f"model '{model_id}' cannot fall back to itself", "fallback_model", 422)


class FallbackView:
    """The name each model falls back to first, as failover follows them: for a tenant its assignment's
    fallback, else the model's own; for the registry (tenant None) the model's own. `models` and `assigned`
    lay a change being decided over the catalog."""

    def __init__(self, catalog: Catalog, tenant_id: str | None, models: dict[str, str] | None = None,
                 assigned: dict[str, str] | None = None) -> None:
        self.catalog, self.tenant_id = catalog, tenant_id
        self.models, self.assigned = models or {}, assigned or {}

    def __call__(self, model_id: str) -> str:
        if self.tenant_id is not None:
            if model_id in self.assigned:
                chosen = self.assigned[model_id]
            else:
                assignment = self.catalog.assignments.get(self.tenant_id, {}).get(model_id)
                chosen = assignment.fallback_model if assignment is not None else ""
            if chosen:
                return chosen
        if model_id in self.models:
            return self.models[model_id]
        model = self.catalog.models.get(model_id)
        return model.fallback_model if model is not None else ""


Choosing = list[tuple[str, dict[str, ev.TenantModelAssigned]]]     # tenants with fallbacks of their own


def choosing_tenants(catalog: Catalog) -> Choosing:
    """The tenants whose chains differ from the registry's (an assignment names a fallback), with their assignments."""
    return [(tid, by) for tid, by in sorted(catalog.assignments.items()) if any(a.fallback_model for a in by.values())]


def model_starts(catalog: Catalog, model_id: str, tenants: Choosing | None = None) -> list[tuple[str | None, str]]:
    """Where a change of a model's own fallback could close a cycle: the registry's chains, and those of each
    tenant that chose fallbacks of its own, unless it chose one for this model (then its chain is unchanged)."""
    tenants = choosing_tenants(catalog) if tenants is None else tenants
    return [(None, model_id), *((tid, model_id) for tid, by in tenants
                                if not (model_id in by and by[model_id].fallback_model))]


def refuse_cycles(catalog: Catalog, starts: list[tuple[str | None, str]], field: str,
                  models: dict[str, str] | None = None, assigned: dict[str, str] | None = None) -> None:
    """422 naming the cycle if a fallback chain from one of `starts` (tenant or None, model id) comes back to
    its model once the change (`models`, `assigned`: see FallbackView) is made."""
    for tenant_id, model_id in starts:
        view = FallbackView(catalog, tenant_id, models, assigned if tenant_id is not None else None)
        cycle = rules.fallback_cycle(model_id, view, catalog.resolve_model)
        if cycle is not None:
            raise invalid("VALIDATION_ERROR", rules.cycle_problem(cycle, tenant_id), field, 422)


def remove_model(catalog: Catalog, command: m.RemoveModel) -> list[ev.Event]:
    """Refused (409) while another model or an assignment falls back to it; its assignments go with it."""
    mid = command.model_id
    if mid not in catalog.models:
        raise not_found("MODEL_NOT_FOUND", "Model", mid, "model_id")
    users = sorted(x.model_id for x in catalog.models.values()
                   if x.fallback_model and catalog.resolve_model(x.fallback_model) == mid and x.model_id != mid)
    users += sorted(f"{t}/{a.model_id}" for t, by in catalog.assignments.items() for a in by.values()
                    if a.fallback_model and catalog.resolve_model(a.fallback_model) == mid)
    if users:
        raise invalid("CONFLICT", f"Model '{mid}' is the fallback of {', '.join(users)}", "model_id", 409)
    withdrawn: list[ev.Event] = [ev.TenantModelUnassigned(tenant_id=t, model_id=mid)
                                 for t, by in sorted(catalog.assignments.items()) if mid in by]
    return [*withdrawn, ev.ModelRemoved(model_id=mid)]


def assign_model(catalog: Catalog, command: m.AssignModel, check_cycles: bool = True) -> list[ev.Event]:
    """An assignment; a new default takes the default flag from the tenant's previous one."""
    tid = command.tenant_id
    if tid not in catalog.tenants:
        raise not_found("TENANT_NOT_FOUND", "Tenant", tid, "tenant_id")
    model_id = catalog.resolve_model(command.model_id)
    if model_id is None:
        raise not_found("MODEL_NOT_FOUND", "Model", command.model_id, "model_id")
    assigned = catalog.assignments.get(tid, {})
    check_mode(command, assigned.get(model_id), "Assignment", f"{tid}/{model_id}", "model_id")
    if command.is_default and not command.enabled:
        raise invalid("VALIDATION_ERROR", "a disabled model cannot be the tenant's default", "is_default", 422)
    for name in ("input_price_per_1m", "output_price_per_1m", "cached_input_price_per_1m"):
        price = getattr(command, name)
        if price is not None and price < 0:
            raise invalid("VALIDATION_ERROR", f"{name} cannot be negative", name)
    _check_fallback(catalog, command.fallback_model, model_id)
    if check_cycles:
        refuse_cycles(catalog, [(tid, model_id)], "fallback_model", assigned={model_id: command.fallback_model})
    new = ev.TenantModelAssigned(**{**fields_of(command), "model_id": model_id})
    if same(assigned.get(model_id), new):
        return []
    events: list[ev.Event] = []
    if new.is_default:
        events += [msgspec.structs.replace(a, is_default=False, event_id=ev.new_id(), occurred_at=ev.now())
                   for mid, a in sorted(assigned.items()) if a.is_default and mid != model_id]
    return [*events, new]


def apply_template(catalog: Catalog, command: m.ApplyTemplate) -> list[ev.Event]:
    """The template's provider (registered if new) and a new endpoint with the template's settings,
    each overridden by what the command gives."""
    from switchyard_gateway.services.registry.decide import register_endpoint    # decide dispatches here: import late

    template = TEMPLATES.get(command.template)
    if template is None:
        raise not_found("TEMPLATE_NOT_FOUND", "Template", command.template, "template")
    provider_id = command.provider_id or template.name
    check_identifier(provider_id, "provider_id")
    check(rules.display_name_problem(command.display_name or ""), "display_name")
    events: list[ev.Event] = []
    provider = catalog.providers.get(provider_id)
    if provider is None:
        provider = ev.ProviderRegistered(provider_id=provider_id, kind=template.kind,
                                         display_name=command.display_name or template.display_name)
        events.append(provider)
    elif provider.kind != template.kind:
        raise invalid("CONFLICT", f"Provider '{provider_id}' exists with kind '{provider.kind}', "
                      f"not the template's '{template.kind}'", "provider_id", 409)
    work = catalog.copy()
    for event in events:
        work.apply(event)

    def pick(value: object, default: object) -> object:
        return default if value is None else value

    endpoint = m.RegisterEndpoint(
        endpoint_id=command.endpoint_id, provider_id=provider_id, base_url=command.base_url or template.base_url,
        api_key_ref=pick(command.api_key_ref, template.api_key_ref),  # type: ignore[arg-type]
        models=tuple(pick(command.models, template.models)),  # type: ignore[arg-type]
        priority=pick(command.priority, 0), weight=pick(command.weight, 1),  # type: ignore[arg-type]
        max_concurrent=pick(command.max_concurrent, 0),  # type: ignore[arg-type]
        timeout_s=pick(command.timeout_s, template.timeout_s),  # type: ignore[arg-type]
        first_byte_timeout_s=command.first_byte_timeout_s, warm_on_start=bool(command.warm_on_start), mode="create")
    return [*events, *register_endpoint(work, endpoint)]


def unassign_model(catalog: Catalog, command: m.UnassignModel, check_cycles: bool = True) -> list[ev.Event]:
    """Refused (422) if the tenant's chain would then close a cycle through the model's own fallback."""
    if command.model_id not in catalog.assignments.get(command.tenant_id, {}):
        raise not_found("ASSIGNMENT_NOT_FOUND", "Assignment", f"{command.tenant_id}/{command.model_id}", "model_id")
    if check_cycles:
        refuse_cycles(catalog, [(command.tenant_id, command.model_id)], "model_id", assigned={command.model_id: ""})
    return [ev.TenantModelUnassigned(tenant_id=command.tenant_id, model_id=command.model_id)]


def cycles_after(catalog: Catalog, events: list[ev.Event]) -> None:
    """422 if the fallbacks a batch of events recorded close a cycle in `catalog`, the state after them: a
    batch (an import) is checked whole, since its commands one by one pass through states it does not end in."""
    starts: list[tuple[str | None, str]] = []
    tenants = choosing_tenants(catalog)
    for event in events:
        match event:
            case ev.ModelRegistered(model_id=mid):
                starts += model_starts(catalog, mid, tenants)
            case ev.TenantModelAssigned(tenant_id=tid, model_id=mid) | ev.TenantModelUnassigned(tenant_id=tid,
                                                                                               model_id=mid):
                starts.append((tid, mid))
    refuse_cycles(catalog, list(dict.fromkeys(starts)), "fallback_model")


def record_discovered(catalog: Catalog, command: m.RecordDiscoveredModels) -> list[ev.Event]:
    """A changed model set of an endpoint; an endpoint without a model list also gets every model it
    serves registered (kind guessed from the name) so that the gateway can route it."""
    eid = command.endpoint_id
    registered = catalog.registered.get(eid)
    if registered is None:
        raise not_found("ENDPOINT_NOT_FOUND", "Endpoint", eid, "endpoint_id")
    models = tuple(sorted({rules.normalise_model(n) for n in command.models if not rules.model_name_problem(n)}))
    if catalog.discovered.get(eid) == models:
        return []
    events: list[ev.Event] = [EndpointModelsDiscovered(endpoint_id=eid, models=models)]
    if not registered.models:
        events += [ev.ModelRegistered(model_id=name, kind=rules.guess_kind(name))  # type: ignore[arg-type]
                   for name in models if catalog.resolve_model(name) is None]
    return events
