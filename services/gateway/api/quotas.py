"""Quota routes: limits administration (admin role) and the quota and usage views (a tenant's own figures)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, Router, get, put
from litestar.params import FromPath

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import KeyIssued
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.quota import LimitsUpdate, QuotaQuery, SetLimits, SetLimitsReply
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import AppDeps, admin_guard, ask, json_response, read_json
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.auth import require_admin

_update = msgspec.json.Decoder(LimitsUpdate)
_set_reply = msgspec.json.Decoder(SetLimitsReply)
PERIODS = ("day", "week", "month")


def _not_found(code: str, what: str, ident: str, field: str) -> ServiceError:
    return ServiceError(404, ErrorBody(code, f"{what} '{ident}' not found", field))


async def _set_limits(request: Request[Any, Any, Any], deps: Deps, tenant_id: str,
                      model_id: str = "") -> Response[bytes]:
    catalog = deps.catalog
    if tenant_id not in catalog.tenants:
        raise _not_found("TENANT_NOT_FOUND", "Tenant", tenant_id, "tenant_id")
    if model_id:
        resolved = catalog.resolve_model(model_id)
        if resolved is None:
            raise _not_found("MODEL_NOT_FOUND", "Model", model_id, "model_id")
        model_id = resolved
    update = read_json(await request.body() or b"{}", _update.decode)
    command = SetLimits(tenant_id=tenant_id, model_id=model_id, update=update)
    reply = _set_reply.decode(await ask(deps, subjects.QUOTA_COMMAND, command))
    if reply.event is not None:          # read-your-writes: this gateway enforces the new limits from now on
        await deps.quota.feed.wait_for(str(reply.event.event_id))
    body = {"changed": reply.event is not None, "tenant_id": tenant_id, "model_id": model_id or None,
            "limits": msgspec.structs.asdict(reply.limits)}
    return Response(encode(body), media_type="application/json")


@put("/tenants/{tenant_id:str}/limits")
async def set_tenant_limits(request: Request[Any, Any, Any], deps: AppDeps,
                            tenant_id: FromPath[str]) -> Response[bytes]:
    """Set any of daily_tokens, monthly_tokens, monthly_requests, rpm, tpm, key_rpm, key_tpm, budget_usd,
    budget_period, timezone, default_max_tokens; a field left out keeps its value, null removes it."""
    return await _set_limits(request, deps, tenant_id)


async def set_model_limits(request: Request[Any, Any, Any], deps: Deps, tenant_id: str, model_id: str) -> Response[bytes]:
    """`PUT /tenants/{tenant_id}/models/{model_id}/limits`, served by the assignment's path route (a model id
    may hold slashes): the same fields for one model of the tenant (no timezone: the tenant's applies)."""
    return await _set_limits(request, deps, tenant_id, model_id)


@get("/tenants/{tenant_id:str}/limits")
async def get_limits(deps: AppDeps, tenant_id: FromPath[str]) -> Response[bytes]:
    if tenant_id not in deps.catalog.tenants:          # as its PUT answers: not an empty set of limits
        raise _not_found("TENANT_NOT_FOUND", "Tenant", tenant_id, "tenant_id")
    return await _query(deps, QuotaQuery(kind="limits", tenant_id=tenant_id))


limits_router = Router(path="/api/admin", guards=[admin_guard],
                       route_handlers=[set_tenant_limits, get_limits])


def _scope(request: Request[Any, Any, Any], deps: Deps) -> tuple[KeyIssued, str]:
    """The caller, and the tenant whose figures it reads: its own, or any tenant for an admin."""
    catalog = deps.catalog
    key = deps.auth.authenticate(request.headers)
    asked = request.query_params.get("tenant_id")
    if asked and asked != key.tenant_id:
        require_admin(key)
        if asked not in catalog.tenants:
            raise _not_found("TENANT_NOT_FOUND", "Tenant", asked, "tenant_id")
    return key, asked or key.tenant_id


async def _query(deps: Deps, query: QuotaQuery) -> Response[bytes]:
    return json_response(await ask(deps, subjects.QUOTA_QUERY, query))


@get("/api/v1/tenant-models/quotas")
async def quotas_view(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """Each limit of the tenant and its models with what is used, what remains and when it resets."""
    key, tenant_id = _scope(request, deps)
    own_key = key.key_id if tenant_id == key.tenant_id else None
    return await _query(deps, QuotaQuery(kind="quotas", tenant_id=tenant_id, key_id=own_key))


@get("/api/v1/tenant-models/usage")
async def usage_view(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """The tenant's usage in the current day, week or month (`period`), optionally of one model (`model_id`)."""
    _, tenant_id = _scope(request, deps)
    period = request.query_params.get("period", "day")
    if period not in PERIODS:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "period must be one of day, week, month", "period"))
    model_id = request.query_params.get("model_id") or None
    if model_id is not None:
        model_id = deps.catalog.resolve_model(model_id) or model_id
    return await _query(deps, QuotaQuery(kind="usage", tenant_id=tenant_id, period=period, model_id=model_id))


ROUTES = [limits_router, quotas_view, usage_view]
