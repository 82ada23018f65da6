"""Read-only routes beside the hot path, in the seed's monitoring shapes: /v1/models, /api/usage,
/api/token_counts, /api/stats, /api/config, /api/usage-stream, and the time-series rollup.

Figures come from metering over NATS (`metering.query.v1`, `metering.command.v1`), endpoint health
from the router's breakers and probes as this gateway follows them (`api/health.py`), in-flight calls
from this gateway's router. An operator (admin key) sees everything; a tenant sees its own usage and
the endpoints serving its models.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import (
    ask, caller, json_object, json_response, scope_of, visible_endpoints,
)
from switchyard_gateway.services.gateway.api.health import endpoint_health
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.auth import require_admin

_any = msgspec.json.Decoder()
Req = Request[Any, Any, Any]


class StatsRequest(msgspec.Struct, frozen=True):
    model: str | None = None
    since: float | None = None
    tenant_id: str | None = None        # one tenant's figures: the caller's own, or any tenant's for an operator


class RollupRequest(msgspec.Struct, frozen=True):
    days: int
    trim_old: bool = False


@get("/v1/models")
async def list_models(request: Req, deps: Deps) -> Response[bytes]:
    """The models this caller's tenant may use, in the OpenAI list shape."""
    key = caller(request, deps)
    catalog = deps.catalog
    data = [
        {"id": model.model_id, "object": "model", "created": int(model.occurred_at.timestamp()),
         "owned_by": "switchyard"}
        for model in catalog.models_for(key.tenant_id)
    ]
    return json_response({"object": "list", "data": data})


@get("/api/token_counts")
async def token_counts(request: Req, deps: Deps) -> Response[bytes]:
    """Token totals from the metering projection: all of them for an admin, the caller's tenant otherwise."""
    key = caller(request, deps)
    return json_response(await ask(deps, subjects.METERING_QUERY, {"tenant_id": scope_of(key)}))


@get("/api/usage")
async def usage(request: Req, deps: Deps) -> Response[bytes]:
    """In-flight calls per endpoint and model (operators), and token usage per endpoint and model."""
    key = caller(request, deps)
    tokens = _any.decode(await ask(deps, subjects.METERING_QUERY, {"query": "usage", "tenant_id": scope_of(key)}))
    counts = deps.router.inflight_counts() if key.role == "admin" else {}
    return json_response({"usage_counts": counts, "token_usage_counts": tokens["token_usage_counts"]})


@post("/api/stats", status_code=200)
async def stats(request: Req, deps: Deps) -> Response[bytes]:
    """One model's tokens, time series and distribution over endpoints; everyone's or one tenant's."""
    key = caller(request, deps)
    body = msgspec.convert(await json_object(request), StatsRequest)
    if not body.model:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "Missing required field 'model'", "model"))
    model = deps.catalog.resolve_model(body.model) or body.model
    query = {"query": "stats", "model": model, "tenant_id": scope_of(key, body.tenant_id), "since": body.since}
    return json_response(await ask(deps, subjects.METERING_QUERY, query))


@post("/api/aggregate_time_series_days", status_code=200)
async def aggregate_time_series_days(request: Req, deps: Deps) -> Response[bytes]:
    """Show minutes older than `days` days by day; `trim_old` also drops them. Idempotent. Operators only."""
    require_admin(caller(request, deps))
    body = msgspec.convert(await json_object(request), RollupRequest)
    return json_response(await ask(deps, subjects.METERING_COMMAND, {"days": body.days, "trim_old": body.trim_old}))


@get("/api/config")
async def config(request: Req, deps: Deps) -> Response[bytes]:
    """The endpoints this gateway routes to, with their health (never credentials); an operator also sees their
    URLs, settings and what is wrong, a tenant only which of its endpoints are up."""
    key = caller(request, deps)
    circuits = deps.circuits
    admin = key.role == "admin"
    models = None if admin else {m.model_id for m in deps.catalog.models_for(key.tenant_id)}
    endpoints = []
    for e in visible_endpoints(deps, key):
        entry: dict[str, Any] = {"id": e.endpoint_id, "provider": e.provider_id,
                                 "models": [m for m in e.models if models is None or m in models],
                                 "priority": e.priority}
        if admin:
            entry.update(url=e.base_url, weight=e.weight, max_concurrent=e.max_concurrent, timeout_s=e.timeout_s,
                         first_byte_timeout_s=e.first_byte_timeout_s or deps.settings.first_byte_timeout_s)
        health_ = endpoint_health(circuits, e)
        entry["status"] = health_["status"]
        for field in ("version", "circuit", *(("detail", "credential_missing") if admin else ())):
            if field in health_:
                entry[field] = health_[field]
        endpoints.append(entry)
    return json_response({"endpoints": endpoints})


@get("/api/usage-stream")
async def usage_stream(request: Req, deps: Deps) -> Stream:
    """Server-Sent Events: a usage snapshot now, then one each time usage events arrive."""
    key = caller(request, deps)
    tenant = scope_of(key)
    hub = deps.usage_stream
    watcher = await hub.watch(tenant, {})           # subscribed first: no event falls between baseline and feed
    try:
        baseline = _any.decode(await ask(deps, subjects.METERING_QUERY, {"query": "usage", "tenant_id": tenant}))
    except ServiceError:
        baseline = {"token_usage_counts": {}}       # metering away: count from the events that arrive
    except BaseException:
        await hub.leave(watcher)
        raise
    for endpoint, per_model in baseline["token_usage_counts"].items():
        mine = watcher.tokens.setdefault(endpoint, {})
        for model, tokens in per_model.items():
            mine[model] = mine.get(model, 0) + tokens
    return Stream(hub.stream(watcher), media_type="text/event-stream",
                  headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


# /health is api/health.py's, which replaces the service default (create_service_app(health_handler=...)).
ROUTES = [list_models, token_counts, usage, stats, aggregate_time_series_days, config, usage_stream]
