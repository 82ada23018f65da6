"""Read-only routes beside the hot path, in the seed's monitoring shapes: /v1/models[/{id}], /api/usage,
/api/token_counts, /api/stats, /api/config, /api/usage-stream, and the time-series rollup.

Figures come from metering over NATS (`metering.query.v1`, `metering.command.v1`), endpoint health
from the router's breakers and probes as this gateway follows them (`api/health.py`), in-flight calls
from this gateway's router. An operator (admin key) sees everything; a tenant sees its own usage and
the endpoints serving its models.
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from switchyard_gateway.catalog.rules import model_name_problem
from switchyard_gateway.kit.service import PROMETHEUS_MEDIA_TYPE
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import ModelRegistered
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import (
    AppDeps, ask, caller, json_object, json_response, scope_of, visible_endpoints,
)
from switchyard_gateway.services.gateway.api.health import endpoint_health
from switchyard_gateway.services.gateway.edge import errors
from switchyard_gateway.services.gateway.edge.auth import require_admin
from switchyard_gateway.services.gateway.edge.errors import GatewayError

_any = msgspec.json.Decoder()
Req = Request[Any, Any, Any]


EPOCH_MAX_S = 253402300799.0          # 9999-12-31T23:59:59Z, the last instant a timestamp can name


class StatsRequest(msgspec.Struct, frozen=True):
    model: str | None = None            # none: every model's figures together
    since: Annotated[float, Meta(ge=0, le=EPOCH_MAX_S)] | None = None     # epoch seconds
    tenant_id: str | None = None        # one tenant's figures: the caller's own, or any tenant's for an operator


class RollupRequest(msgspec.Struct, frozen=True):
    days: int
    trim_old: bool = False


def model_object(model: ModelRegistered) -> dict[str, Any]:
    """OpenAI's model object."""
    return {"id": model.model_id, "object": "model", "created": int(model.occurred_at.timestamp()),
            "owned_by": "switchyard"}


def anthropic_model_object(model: ModelRegistered) -> dict[str, Any]:
    """Anthropic's model object (what its client's `models.list()` / `models.retrieve()` read): `lifecycle` always
    `active` (a removed model is not listed), `max_input_tokens` the registry's context length when it has one."""
    created = model.occurred_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"type": "model", "id": model.model_id, "display_name": model.model_id, "created_at": created,
            "lifecycle": "active", "max_input_tokens": model.context_length or None}


def anthropic_page(request: Req, models: list[ModelRegistered]) -> dict[str, Any]:
    """Anthropic's page of models: `limit` (1-1000, default 20), after `after_id` or before `before_id`."""
    params = request.query_params
    raw_limit = params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise GatewayError("limit: must be an integer from 1 to 1000", status=400, kind="invalid_request_error",
                           param="limit")
    limit, ids = int(raw_limit), [m.model_id for m in models]
    after, before = params.get("after_id"), params.get("before_id")
    if after is not None or before is not None:
        anchor = after if after is not None else before
        if anchor not in ids:
            raise GatewayError(f"{'after_id' if after is not None else 'before_id'}: no model '{anchor}' in the "
                               "list", status=400, kind="invalid_request_error")
    if after is not None:
        page = models[ids.index(after) + 1:][:limit]
        more = ids.index(after) + 1 + limit < len(ids)
    elif before is not None:
        start = max(0, ids.index(before) - limit)
        page, more = models[start:ids.index(before)], start > 0
    else:
        page, more = models[:limit], limit < len(ids)
    return {"data": [anthropic_model_object(m) for m in page], "has_more": more,
            "first_id": page[0].model_id if page else None, "last_id": page[-1].model_id if page else None}


def models_refusal(request: Req, error: GatewayError) -> Response[bytes]:
    """A /v1/models refusal (401, 403, 404, a bad page parameter) in Anthropic's error shape for an Anthropic client,
    which reads the answers in Anthropic's shape too; for any other client it is raised on, for the app's handler
    to render in OpenAI's."""
    shape = errors.shape_for_client(request.url.path, request.headers)
    if shape != "anthropic":
        raise error
    return Response(error.render(shape), status_code=error.status, headers=error.headers or None,
                    media_type="application/json")


@get("/v1/models")
async def list_models(request: Req, deps: AppDeps) -> Response[bytes]:
    """The models this caller's tenant may use, in the OpenAI list shape; in Anthropic's (a page) when the caller
    sends `anthropic-version`, as Anthropic's clients do (its errors too)."""
    try:
        key = deps.auth.authenticate(request.headers, anonymous=True)
        models = deps.catalog.models_for(key.tenant_id)
        if "anthropic-version" in request.headers:
            return json_response(anthropic_page(request, list(models)))
    except GatewayError as exc:
        return models_refusal(request, exc)
    return json_response({"object": "list", "data": [model_object(m) for m in models]})


@get("/v1/models/{model_id:path}")
async def retrieve_model(request: Req, deps: AppDeps, model_id: FromPath[str]) -> Response[bytes]:
    """One model this caller's tenant may use, by id or alias (ids may hold slashes); 404 otherwise."""
    name = request.scope["raw_path"].decode().split("/v1/models/", 1)[1]     # decoded once, by the HTTP server
    catalog = deps.catalog
    try:
        key = deps.auth.authenticate(request.headers, anonymous=True)
        found = catalog.resolve_model(name)
        if found is None or not catalog.tenant_may_use(key.tenant_id, found):
            raise GatewayError(f"The model '{name}' does not exist or you do not have access to it.", status=404,
                               kind="invalid_request_error", code="model_not_found", param="model")
    except GatewayError as exc:
        return models_refusal(request, exc)
    if "anthropic-version" in request.headers:
        return json_response(anthropic_model_object(catalog.models[found]))
    return json_response(model_object(catalog.models[found]))


@get("/api/token_counts")
async def token_counts(request: Req, deps: AppDeps) -> Response[bytes]:
    """Token totals from the metering projection: all of them for an admin (one tenant's with `?tenant_id=`), the
    caller's tenant otherwise."""
    key = caller(request, deps)
    tenant = scope_of(key, request.query_params.get("tenant_id"))
    return json_response(await ask(deps, subjects.METERING_QUERY, {"tenant_id": tenant}))


@get("/api/usage")
async def usage(request: Req, deps: AppDeps) -> Response[bytes]:
    """In-flight calls per endpoint and model (operators), and token usage per endpoint and model; in the
    Prometheus text format with `?format=prometheus` (what NOMYO Router's scrape config asks for)."""
    key = caller(request, deps)
    tokens = _any.decode(await ask(deps, subjects.METERING_QUERY, {"query": "usage", "tenant_id": scope_of(key)}))
    counts = deps.router.inflight_counts() if key.role == "admin" else {}
    if request.query_params.get("format") == "prometheus":
        return Response(prometheus_usage(counts, tokens["token_usage_counts"]), media_type=PROMETHEUS_MEDIA_TYPE)
    return json_response({"usage_counts": counts, "token_usage_counts": tokens["token_usage_counts"]})


def prometheus_usage(counts: dict[str, dict[str, int]], tokens: dict[str, dict[str, int]]) -> bytes:
    """`usage_counts{endpoint, model}` (calls in flight here) and `token_usage_counts{endpoint, model}`."""
    registry = CollectorRegistry(auto_describe=False)
    inflight = GaugeMetricFamily("usage_counts", "Calls in flight in this gateway per endpoint and model",
                                 labels=["endpoint", "model"])
    used = GaugeMetricFamily("token_usage_counts", "Tokens used per endpoint and model (the usage log's projection)",
                             labels=["endpoint", "model"])
    for family, table in ((inflight, counts), (used, tokens)):
        for endpoint, per_model in sorted(table.items()):
            for model, value in sorted(per_model.items()):
                family.add_metric([endpoint, model], value)

    class _Families:
        def collect(self) -> list[GaugeMetricFamily]:
            return [inflight, used]

    registry.register(_Families())
    return generate_latest(registry)


@post("/api/stats", status_code=200)
async def stats(request: Req, deps: AppDeps) -> Response[bytes]:
    """One model's tokens, time series and distribution over endpoints, or without `model` every model's together
    (what an overview sums, in one request); everyone's or one tenant's."""
    key = caller(request, deps)
    body = msgspec.convert(await json_object(request), StatsRequest)
    if body.model and (problem := model_name_problem(body.model)) is not None:   # a NUL reached metering's SQL: 500
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"model: {problem}", "model"))
    model = (deps.catalog.resolve_model(body.model) or body.model) if body.model else None
    query = {"query": "stats", "model": model, "tenant_id": scope_of(key, body.tenant_id), "since": body.since}
    return json_response(await ask(deps, subjects.METERING_QUERY, query))


@post("/api/aggregate_time_series_days", status_code=200)
async def aggregate_time_series_days(request: Req, deps: AppDeps) -> Response[bytes]:
    """Show minutes older than `days` days by day; `trim_old` also drops them. Idempotent. Operators only."""
    require_admin(caller(request, deps))
    body = msgspec.convert(await json_object(request), RollupRequest)
    return json_response(await ask(deps, subjects.METERING_COMMAND, {"days": body.days, "trim_old": body.trim_old}))


@get("/api/config")
async def config(request: Req, deps: AppDeps) -> Response[bytes]:
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
async def usage_stream(request: Req, deps: AppDeps) -> Stream:
    """Server-Sent Events: a usage snapshot now, then one each time usage events arrive, while the caller stands
    (checked again before every push: a revoked key, an ended session or a new role or tenant ends the stream)."""
    headers = request.headers
    key = caller(request, deps)
    tenant = scope_of(key)
    hub = deps.usage_stream

    def scope_now() -> str | None:                  # what the caller may see now; AuthError once it stands no more
        return scope_of(deps.auth.authenticate(headers))

    watcher = await hub.watch(tenant, {}, scope_now)     # subscribed first: no event falls between baseline and feed
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
ROUTES = [list_models, retrieve_model, token_counts, usage, stats, aggregate_time_series_days, config, usage_stream]
