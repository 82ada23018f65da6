"""What the admin API shows of the catalog: plain dicts, never a key hash or a secret."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import msgspec

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.catalog.templates import TEMPLATES, template_view
from switchyard_gateway.contracts.events import Event, KeyIssued
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.messages import ErrorBody, RegistryPage, RegistryQuery
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


def _records(catalog: Catalog, resource: str, tenant_id: str | None) -> dict[str, tuple[Any, Callable[[], Any]]]:
    """Each item of a list by its id: what it is filtered on (its event, for `tenant_id` and `q`) and how its
    view is made (only for the items a page shows)."""
    rows: dict[str, tuple[Any, Callable[[], Any]]]
    match resource:
        case "tenants":
            rows = {k: (v, partial(view, v)) for k, v in catalog.tenants.items()}
        case "providers":
            rows = {k: (v, partial(view, v)) for k, v in catalog.providers.items()}
        case "endpoints":
            rows = {k: (v, partial(endpoint_view, catalog, k)) for k, v in catalog.registered.items()}
        case "models":
            rows = {k: (v, partial(view, v)) for k, v in catalog.models.items()}
        case "keys":
            rows = {k: (v, partial(key_view, v, False)) for k, v in catalog.keys.items()}
            rows.update({k: (v, partial(key_view, v, True)) for k, v in catalog.revoked.items()})
        case "assignments":
            # one tenant's are listed by model id, as its route names them; all of them by `tenant/model`
            rows = {(m if tenant_id is not None else f"{t}/{m}"): (a, partial(view, a))
                    for t, by_model in catalog.assignments.items() if tenant_id in (None, t)
                    for m, a in by_model.items()}
        case "templates":
            rows = {k: (t, partial(template_view, t)) for k, t in TEMPLATES.items()}
        case "users":
            rows = {k: (v, partial(user_view, catalog, k)) for k, v in catalog.users.items()}
    if tenant_id is not None:
        rows = {k: r for k, r in rows.items() if getattr(r[0], "tenant_id", None) == tenant_id}
    return rows


_NAMED_BY = ("display_name", "name")      # what `q` is looked for in beside the id


def _matches(key: str, record: Any, wanted: str) -> bool:
    return wanted in key.casefold() or any(
        wanted in value.casefold() for field in _NAMED_BY if isinstance(value := getattr(record, field, None), str))


def page(rows: dict[str, tuple[Any, Callable[[], Any]]], query: RegistryQuery, max_bytes: int) -> RegistryPage:
    """At most `query.limit` items after `query.after` (ids in code point order; the id itself need not exist any
    more), of those whose id or name holds `query.q`, and no more than `max_bytes` of them encoded; at least one."""
    wanted = (query.q or "").casefold()
    keys = sorted(k for k, r in rows.items() if not wanted or _matches(k, r[0], wanted))
    start = bisect.bisect_right(keys, query.after) if query.after else 0
    limit = query.limit or len(keys)
    items: list[Any] = []
    size = 0
    for key in keys[start:start + limit]:
        item = rows[key][1]()
        size += len(encode(item)) + 1
        if items and size > max_bytes:
            break
        items.append(item)
    shown = keys[start:start + len(items)]
    has_more = start + len(items) < len(keys)
    return RegistryPage(items=items, has_more=has_more, next_after=shown[-1] if has_more and shown else None,
                        total=len(keys))


def answer(catalog: Catalog, query: RegistryQuery, position: int = 0, changed_at: datetime | None = None,
           max_bytes: int = 1 << 20) -> Any:
    """One resource when `id` is given (404 if missing); a `RegistryPage` when `limit` is; else the whole list."""
    match query.resource:
        case "status":
            return status(catalog, position, changed_at)
        case "export":
            return config_file.export(catalog)
    if query.id is not None and query.resource == "assignments":
        tenant, _, model = query.id.partition("/")
        rows = _records(catalog, "assignments", tenant)
        key = model
    else:
        rows = _records(catalog, query.resource, query.tenant_id)
        key = query.id
    if key is None:
        if query.limit is not None:
            return page(rows, query, max_bytes)
        return [rows[k][1]() for k in sorted(rows)]
    if key not in rows:
        code = _NOT_FOUND.get(query.resource, f"{query.resource[:-1].upper()}_NOT_FOUND")
        raise ServiceError(404, ErrorBody(code, f"{query.resource[:-1].capitalize()} '{query.id}' not found", "id"))
    return rows[key][1]()
