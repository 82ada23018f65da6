"""The embedding services' routes, as aliases of what Switchyard has: the model catalog and tenant models
(`/api/v1/embedding-models/catalog`, `/api/v1/tenant-models`), the embeddings service's health, metrics,
circuit breakers and warm-up (`/api/v1/embeddings/...`), and model discovery (`/api/v1/admin/discover-models`).

Each answers in the shape those services' users read, from the same sources as Switchyard's own routes:
the local catalog and breakers, the registry, the quota service, metering and the router's leader.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post, put
from litestar.params import FromPath, JSONBody

from switchyard_gateway.catalog import rules
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.quota import (
    Limits, LimitsReply, LimitsUpdate, QuotaQuery, SetLimits, SetLimitsReply,
)
from switchyard_gateway.contracts.routing import CircuitChanged
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.api import routing_admin, warmup
from switchyard_gateway.quotas.limits import InvalidLimits, merge
from switchyard_gateway.services.gateway.api.common import (
    AppDeps, admin_guard, ask, caller, json_response, read_json,
)
from switchyard_gateway.services.gateway.api.health import _optional_caller
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.auth import require_admin

Req = Request[Any, Any, Any]
_command_reply = msgspec.json.Decoder(m.CommandReply)
_limits = msgspec.json.Decoder(LimitsReply)
_set = msgspec.json.Decoder(SetLimitsReply)
_changed = msgspec.json.Decoder(CircuitChanged)
_views = msgspec.json.Decoder(list[m.CircuitView])


def _not_found(code: str, message: str, field: str) -> ServiceError:
    return ServiceError(404, m.ErrorBody(code, message, field))


# --- the model catalog and tenant models (the embedding-model platform's REST API) --------------------------


@get("/api/v1/embedding-models/catalog")
async def catalog(request: Req, deps: AppDeps) -> Response[bytes]:
    """Every embedding model the caller's tenant may use (an operator: every one), with its providers and
    whether it can be served now."""
    key = caller(request, deps)
    cat = deps.catalog
    models = cat.models.values() if key.role == "admin" else cat.models_for(key.tenant_id)
    rows = []
    for model in sorted((x for x in models if x.kind == "embedding"), key=lambda x: x.model_id):
        endpoints = cat.endpoints_serving(model.model_id)
        rows.append({"id": model.model_id, "model_id": model.model_id, "model_name": model.model_id,
                     "provider": endpoints[0].provider_id if endpoints else None,
                     "providers": sorted({e.provider_id for e in endpoints}), "model_type": model.kind,
                     "aliases": list(model.aliases), "context_length": model.context_length or None,
                     "input_price_per_1m": model.input_price_per_1m,
                     "is_available": metrics.model_available(cat, deps.circuits, model.model_id)})
    return json_response({"models": rows, "count": len(rows)})


class TenantModel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The embedding platform's tenant-model body: the assignment and the model's token quotas in one."""

    model_id: str | None = None
    tenant_id: str | None = None
    enabled: bool | None = None
    is_default: bool | None = None
    priority: int | None = None         # higher is preferred here
    monthly_quota: int | None | msgspec.UnsetType = msgspec.UNSET
    daily_quota: int | None | msgspec.UnsetType = msgspec.UNSET


_tenant_model = msgspec.json.Decoder(TenantModel).decode
_QUOTA_FIELDS = {"daily_tokens": "daily_quota", "monthly_tokens": "monthly_quota"}    # ours -> the body's


async def _apply(request: Req, deps: Deps, model: str | None, create: bool) -> Response[bytes]:
    """Assign (or change) a tenant's model and its token quotas: the caller checked first (401/403 before the body
    is read), then every value (400 naming the body's own field), and only then anything recorded, so that a bad
    quota leaves no assignment behind."""
    key = require_admin(caller(request, deps))
    body = read_json(await request.body() or b"{}", _tenant_model)
    model = model or body.model_id
    if not model:
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", "Missing required field 'model_id'", "model_id"))
    update = LimitsUpdate(daily_tokens=body.daily_quota, monthly_tokens=body.monthly_quota)
    try:
        merge(Limits(), update, per_model=True)
    except InvalidLimits as exc:
        field = _QUOTA_FIELDS.get(exc.field, exc.field)
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", str(exc).replace(exc.field, field), field)) from None
    tenant_id = body.tenant_id or request.query_params.get("tenant_id") or key.tenant_id
    if problem := rules.identifier_problem(tenant_id):          # as the registry says of a name no tenant can have
        raise ServiceError(400, m.ErrorBody("INVALID_IDENTIFIER", f"tenant_id: {problem}", "tenant_id"))
    cat = deps.catalog
    if tenant_id not in cat.tenants:
        raise _not_found("TENANT_NOT_FOUND", f"Tenant '{tenant_id}' not found", "tenant_id")
    model_id = cat.resolve_model(model)
    current = cat.assignments.get(tenant_id, {}).get(model_id) if model_id is not None else None
    if current is None and not create:     # the embedding platform's own body for this refusal, known model or not
        return Response(encode({"error": "Model not found", "details": f"Model {model_id or model} is not "
                                f"configured for tenant {tenant_id}", "code": "MODEL_NOT_CONFIGURED"}),
                        status_code=404, media_type="application/json")
    if model_id is None:
        raise _not_found("MODEL_NOT_FOUND", f"Model '{model}' not found", "model_id")
    fields = {k: v for k, v in msgspec.to_builtins(current).items() if k in m.AssignModel.__struct_fields__} \
        if current is not None else {}
    given = {k: getattr(body, k) for k in ("enabled", "is_default", "priority") if getattr(body, k) is not None}
    command = m.AssignModel(**{**fields, **given, "tenant_id": tenant_id, "model_id": model_id, "mode": "upsert",
                               "if_match": str(current.event_id) if current is not None else None})
    reply = _command_reply.decode(await ask(deps, subjects.REGISTRY_COMMAND, command))
    await deps.state.wait_for({str(e.event_id) for e in reply.recorded})
    if body.daily_quota is not msgspec.UNSET or body.monthly_quota is not msgspec.UNSET:
        limits = _set.decode(await ask(deps, subjects.QUOTA_COMMAND,
                                       SetLimits(tenant_id=tenant_id, model_id=model_id, update=update)))
        if limits.event is not None:
            await deps.quota.feed.wait_for(str(limits.event.event_id))
        quota = limits.limits
    else:
        quota = _limits.decode(await ask(deps, subjects.QUOTA_QUERY, QuotaQuery(kind="limits", tenant_id=tenant_id))) \
            .models.get(model_id)
    assigned = deps.catalog.assignments[tenant_id][model_id]
    return json_response({"tenant_id": tenant_id, "model_id": model_id, "enabled": assigned.enabled,
                          "is_default": assigned.is_default, "priority": assigned.priority,
                          "monthly_quota": quota.monthly_tokens if quota else None,
                          "daily_quota": quota.daily_tokens if quota else None},
                         201 if create and current is None else 200)


@post("/api/v1/tenant-models", status_code=201)
async def enable_tenant_model(request: Req, deps: AppDeps) -> Response[bytes]:
    """Enable a model for a tenant (the caller's, or `tenant_id`), with optional token quotas; admin role."""
    return await _apply(request, deps, None, create=True)


@put("/api/v1/tenant-models/{model:path}")
async def update_tenant_model(request: Req, deps: AppDeps, model: FromPath[str]) -> Response[bytes]:
    """Change a tenant's model: enabled, default, priority, daily and monthly token quotas; admin role."""
    return await _apply(request, deps, request.scope["raw_path"].decode().split("/tenant-models/", 1)[1],
                        create=False)


# --- the embeddings service's operations routes ---------------------------------------------------------------


def embeddings_status(models: dict[str, bool]) -> str:
    """healthy, degraded or unhealthy, from whether each embedding model can be served. None registered yet is
    nothing failing: a probe of a fresh gateway (the embeddings service's container health check) passes."""
    up = sum(models.values())
    return "healthy" if up == len(models) else "degraded" if up else "unhealthy"


@get("/api/v1/embeddings/health")
async def embeddings_health(request: Req, deps: AppDeps) -> Response[bytes]:
    """healthy (every embedding model can be served, or none is registered yet), degraded (some), unhealthy (none
    of those registered: 503); anyone may ask, an operator sees each model."""
    cat = deps.catalog
    models = {x.model_id: metrics.model_available(cat, deps.circuits, x.model_id)
              for x in cat.models.values() if x.kind == "embedding"}
    status = embeddings_status(models)
    body: dict[str, Any] = {"status": status, "service": "embeddings",
                            "timestamp": msgspec.to_builtins(datetime.now(UTC))}
    key = _optional_caller(request, deps)
    if key is not None and key.role == "admin":
        body.update(models={k: {"available": v} for k, v in sorted(models.items())},
                    active_requests=metrics.active_embeddings())
    return json_response(body, 503 if status == "unhealthy" else 200)


@get("/metrics")
async def embeddings_metrics(deps: AppDeps) -> Response[bytes]:
    """Per embedding model: calls, errors, tokens and cost (every gateway's, from metering), whether it can be
    served, and this gateway's active requests."""
    out: dict[str, Any] = {}
    for model in sorted(x.model_id for x in deps.catalog.models.values() if x.kind == "embedding"):
        stats = msgspec.json.decode(await ask(deps, subjects.METERING_QUERY, {"query": "stats", "model": model}))
        out[model] = {"requests_total": stats["calls"], "errors_total": stats["errors"],
                      "input_tokens": stats["input_tokens"], "cost_usd": stats["cost_usd"],
                      "available": metrics.model_available(deps.catalog, deps.circuits, model)}
    return json_response({"models": out, "active_requests": metrics.active_embeddings(),
                          "timestamp": msgspec.to_builtins(datetime.now(UTC))})


@get("/circuit-breakers")
async def embeddings_circuits(deps: AppDeps) -> Response[bytes]:
    """Every endpoint's breaker, with its provider, as the router's leader holds it."""
    views = _views.decode(await ask(deps, subjects.ROUTER_QUERY, m.RouterQuery()))
    registered = deps.catalog.registered
    breakers = {v.endpoint_id: {**msgspec.to_builtins(v), "provider": registered[v.endpoint_id].provider_id
                                if v.endpoint_id in registered else None} for v in views}
    return json_response({"circuit_breakers": breakers})


@post("/circuit-breakers/{name:str}/reset", status_code=200)
async def embeddings_reset(deps: AppDeps, name: FromPath[str]) -> Response[bytes]:
    """Close a breaker now: an endpoint's by its id, or every breaker of a provider by the provider's id."""
    registered = deps.catalog.registered
    ids = [name] if name in registered else sorted(e for e, x in registered.items() if x.provider_id == name)
    if not ids:
        raise _not_found("PROVIDER_NOT_FOUND", f"No endpoint or provider '{name}'", "provider")
    reset = []
    for endpoint_id in ids:
        change = _changed.decode(await ask(deps, subjects.ROUTER_COMMAND, m.ResetCircuit(endpoint_id=endpoint_id)))
        await deps.circuits.wait_for([str(change.event_id)])
        reset.append({"endpoint_id": endpoint_id, "state": change.state, "previous": change.previous})
    return json_response({"provider": name, "reset": reset})


@post("/models/warmup", status_code=200)
async def embeddings_warmup(deps: AppDeps, data: JSONBody[warmup.WarmupRequest]) -> Response[bytes]:
    """The embeddings service's warm-up (`{"provider", "model_id"}`): Switchyard's, on that provider's endpoints."""
    if data.provider and data.provider not in deps.catalog.providers:
        raise _not_found("PROVIDER_NOT_FOUND", f"Provider '{data.provider}' not found", "provider")
    return await warmup.warmup(deps, data)


@post("/api/v1/admin/discover-models", status_code=200)
async def discover_models(request: Req, deps: AppDeps) -> Response[bytes]:
    """Probe every endpoint now and record the models they advertise (the registry refresh)."""
    require_admin(caller(request, deps))
    return await routing_admin.registry_refresh.fn(deps)


ROUTES = [catalog, enable_tenant_model, update_tenant_model, embeddings_health, discover_models,
          Router(path="/api/v1/embeddings", guards=[admin_guard],
                 route_handlers=[embeddings_metrics, embeddings_circuits, embeddings_reset, embeddings_warmup])]
