"""What the admin API shows of the catalog: plain dicts, never a key hash or a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.catalog.templates import TEMPLATES, template_view
from switchyard_gateway.contracts.events import Event, KeyIssued
from switchyard_gateway.contracts.messages import ErrorBody, RegistryQuery
from switchyard_gateway.catalog import document as config_file
from switchyard_gateway.kit.natsio import ServiceError

_HIDDEN = {"type", "event_id", "occurred_at", "key_sha256", "password_hash"}
_NOT_FOUND = {"providers": "PROVIDER_NOT_FOUND", "models": "MODEL_NOT_FOUND", "templates": "TEMPLATE_NOT_FOUND",
              "assignments": "ASSIGNMENT_NOT_FOUND", "users": "USER_NOT_FOUND"}


def view(event: Event) -> dict[str, Any]:
    """A registry event's full state as a resource, minus identity, time and hashes; its version is the id of
    the event that recorded it."""
    data = msgspec.to_builtins(event)
    data = {k: v for k, v in data.items() if k not in _HIDDEN}
    data["updated_at"] = msgspec.to_builtins(event.occurred_at)
    data["version"] = str(event.event_id)     # what an update names as `if_match` to be recorded only over it
    return data


def key_view(key: KeyIssued, revoked: bool) -> dict[str, Any]:
    return {**view(key), "revoked": revoked}


def user_view(catalog: Catalog, username: str) -> dict[str, Any]:
    """A user without its password hash; `password_changed_at` is when its current password was set."""
    user = catalog.users[username]
    data = {k: v for k, v in view(user).items() if k != "updated_at"}
    data["password_changed_at"] = msgspec.to_builtins(user.occurred_at)
    return data


def endpoint_view(catalog: Catalog, endpoint_id: str) -> dict[str, Any]:
    """An endpoint as registered, with the models its probes discovered and those it serves."""
    data = view(catalog.registered[endpoint_id])
    data["discovered_models"] = list(catalog.discovered.get(endpoint_id, ()))
    data["serving_models"] = list(catalog.endpoints[endpoint_id].models)
    return data


def status(catalog: Catalog, position: int, changed_at: datetime | None) -> dict[str, Any]:
    """How much the registry holds and how far its log goes."""
    return {
        "counts": {
            "providers": len(catalog.providers), "endpoints": len(catalog.registered), "models": len(catalog.models),
            "tenants": len(catalog.tenants),
            "assignments": sum(len(by) for by in catalog.assignments.values()), "keys": len(catalog.keys),
            "users": len(catalog.users),
        },
        "position": position,
        "changed_at": msgspec.to_builtins(changed_at) if changed_at else None,
    }


def answer(catalog: Catalog, query: RegistryQuery, position: int = 0, changed_at: datetime | None = None) -> Any:
    """A list of resources, or one when `id` is given (404 if missing)."""
    items: dict[str, Any]
    match query.resource:
        case "status":
            return status(catalog, position, changed_at)
        case "export":
            return config_file.export(catalog)
        case "tenants":
            items = {k: view(v) for k, v in catalog.tenants.items()}
        case "providers":
            items = {k: view(v) for k, v in catalog.providers.items()}
        case "endpoints":
            items = {k: endpoint_view(catalog, k) for k in catalog.registered}
        case "models":
            items = {k: view(v) for k, v in catalog.models.items()}
        case "keys":
            items = {k: key_view(v, False) for k, v in catalog.keys.items()}
            items.update({k: key_view(v, True) for k, v in catalog.revoked.items()})
        case "assignments":
            items = {
                f"{t}/{m}": view(a) for t, by_model in catalog.assignments.items() for m, a in by_model.items()
            }
        case "templates":
            items = {k: template_view(t) for k, t in TEMPLATES.items()}
        case "users":
            items = {k: user_view(catalog, k) for k in catalog.users}
    if query.tenant_id is not None:
        items = {k: v for k, v in items.items() if v.get("tenant_id") == query.tenant_id}
    if query.id is None:
        return [items[k] for k in sorted(items)]
    if query.id not in items:
        code = _NOT_FOUND.get(query.resource, f"{query.resource[:-1].upper()}_NOT_FOUND")
        raise ServiceError(404, ErrorBody(code, f"{query.resource[:-1].capitalize()} '{query.id}' not found", "id"))
    return items[query.id]
