"""Read-only routes beside the hot path, in the seed's monitoring shapes: /health, /v1/models, /api/usage,
/api/token_counts, /api/stats, /api/config, /api/usage-stream, and the time-series rollup.

Figures come from metering over NATS (`metering.query.v1`, `metering.command.v1`), endpoint health
from the router's breakers and probes as this gateway follows them (`deps.extra["circuits"]`),
in-flight calls from this gateway's router. An operator (admin key) sees everything; a tenant sees
its own usage and the endpoints serving its models.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import EndpointRegistered, KeyIssued
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.edge.auth import authenticate, require_admin
from switchyard_gateway.services.gateway.edge.errors import GatewayError

SERVICES = ("registry", "metering", "router", "quota")   # the gateway's peers, found by NATS micro PING
PING_WAIT_S = 0.25
_any = msgspec.json.Decoder()


class StatsRequest(msgspec.Struct, frozen=True):
    model: str | None = None
    since: float | None = None
    tenant_id: str | None = None        # one tenant's figures: the caller's own, or any tenant's for an operator


class RollupRequest(msgspec.Struct, frozen=True):
    days: int
    trim_old: bool = False


def _deps(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.deps


def _caller(request: Request[Any, Any, Any]) -> KeyIssued:
    return authenticate(_deps(request).extra["state"].catalog, request.headers)


def _scope(key: KeyIssued, asked: str | None = None) -> str | None:
    """The tenant whose figures a caller reads: the one it asked for (another tenant's needs the admin role),
    else its own; None for an operator who asked for none (all of them)."""
    if asked and asked != key.tenant_id:
        require_admin(key)
    return asked or (None if key.role == "admin" else key.tenant_id)


async def _ask(request: Request[Any, Any, Any], subject: str, body: dict[str, Any]) -> bytes:
    deps = _deps(request)
    return await natsio.request(deps.nc, subject, encode(body), deps.settings.request_timeout_s)


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(body if isinstance(body, bytes) else encode(body), status_code=status,
                    media_type="application/json")


async def _body(request: Request[Any, Any, Any], kind: type) -> Any:
    data = _any.decode(await request.body() or b"{}")
    if not isinstance(data, dict):
        raise msgspec.ValidationError("Expected a JSON object")
    return msgspec.convert(data, kind)


def _visible_endpoints(request: Request[Any, Any, Any], key: KeyIssued | None) -> list[EndpointRegistered]:
    """Every endpoint for an operator; for a tenant, those serving a model it may use."""
    catalog = _deps(request).extra["state"].catalog
    endpoints = list(catalog.endpoints.values())
    if key is not None and key.role == "admin":
        return endpoints
    if key is None:
        return endpoints
    models = {m.model_id for m in catalog.models_for(key.tenant_id)}
    return [e for e in endpoints if models & set(e.models)]


# --- health --------------------------------------------------------------------------------------


def endpoint_health(circuits: Any, endpoint: EndpointRegistered) -> dict[str, Any]:
    """ok / error / unknown for one endpoint, from its breaker and its last probe (never a live call)."""
    if circuits is None:
        return {"status": "unknown", "detail": "endpoint health is not available"}
    state = circuits.state(endpoint.endpoint_id)
    probe = circuits.health(endpoint.endpoint_id)
    out: dict[str, Any] = {"circuit": state}
    if probe is not None:
        out.update(latency_ms=probe.get("latency_ms"), checked_at=probe.get("at"))
        if probe.get("version"):
            out["version"] = probe["version"]
    if state == "open":
        out.update(status="error", detail=_circuit_reason(circuits, endpoint.endpoint_id) or "circuit open")
    elif probe is not None and not probe.get("ok"):
        out.update(status="error", detail=probe.get("error") or f"probe answered {probe.get('status')}")
    else:
        out["status"] = "ok" if probe is not None else "unknown"
    return out


def _circuit_reason(circuits: Any, endpoint_id: str) -> str:
    with contextlib.suppress(Exception):
        return str(circuits.describe(endpoint_id).get("circuit_reason") or "")
    return ""


async def service_health(nc: Any) -> dict[str, dict[str, Any]]:
    """Who answers a NATS micro PING within PING_WAIT_S: every instance of every service."""
    seen: dict[str, dict[str, Any]] = {name: {"status": "error", "instances": 0, "detail": "not answering"}
                                       for name in SERVICES}
    if nc is None or not nc.is_connected:
        return {name: {"status": "error", "instances": 0, "detail": "NATS is unreachable"} for name in SERVICES}
    inbox = nc.new_inbox()
    done = asyncio.Event()

    async def on_pong(msg: Any) -> None:
        with contextlib.suppress(msgspec.MsgspecError):
            pong = _any.decode(msg.data)
            name = pong.get("name")
            entry = seen.setdefault(name, {"status": "ok", "instances": 0})
            entry.update(status="ok", version=pong.get("version"))
            entry.pop("detail", None)
            entry["instances"] += 1
            if all(seen[s]["status"] == "ok" for s in SERVICES):
                done.set()

    sub = await nc.subscribe(inbox, cb=on_pong)
    try:
        await nc.publish(subjects.SERVICE_PING, b"", reply=inbox)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), PING_WAIT_S)
    finally:
        await sub.unsubscribe()
    return seen


async def health_report(request: Request[Any, Any, Any], key: KeyIssued | None) -> tuple[dict[str, Any], bool]:
    """The whole report as the caller may see it, and whether everything is healthy."""
    deps = _deps(request)
    circuits = deps.extra.get("circuits")
    state = deps.extra.get("state")
    nats_ok = bool(deps.nc and deps.nc.is_connected)
    all_endpoints = list(state.catalog.endpoints.values()) if state is not None else []
    endpoints = {e.endpoint_id: endpoint_health(circuits, e) for e in all_endpoints}
    services = await service_health(deps.nc)
    healthy = nats_ok and state is not None and all(e["status"] != "error" for e in endpoints.values()) \
        and all(s["status"] == "ok" for s in services.values())
    publisher = deps.extra.get("usage")
    report: dict[str, Any] = {
        "status": "ok" if healthy else "error",
        "gateway": {"status": "ok" if nats_ok else "error", "nats": nats_ok,
                    "usage_events_pending": publisher.pending if publisher is not None else 0},
        "endpoints": endpoints, "services": services,
    }
    if key is None or key.role != "admin":       # a tenant or an anonymous probe: statuses, no details
        visible = {e.endpoint_id for e in _visible_endpoints(request, key)} if key is not None else set(endpoints)
        report["endpoints"] = {eid: {"status": e["status"]} for eid, e in endpoints.items() if eid in visible}
        report["services"] = {name: {"status": s["status"]} for name, s in services.items()}
        report["gateway"] = {"status": report["gateway"]["status"]}
    else:
        for endpoint in all_endpoints:
            endpoints[endpoint.endpoint_id]["url"] = endpoint.base_url
    return report, healthy


def _optional_caller(request: Request[Any, Any, Any]) -> KeyIssued | None:
    if not (request.headers.get("authorization") or request.headers.get("x-api-key")):
        return None
    try:
        return _caller(request)
    except GatewayError:
        return None


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """200 when the gateway, every endpoint and every service are healthy, 503 otherwise, with the detail."""
    report, healthy = await health_report(request, _optional_caller(request))
    return _json(report, 200 if healthy else 503)


# --- usage and statistics ------------------------------------------------------------------------


def inflight_counts(deps: Any) -> dict[str, dict[str, int]]:
    """Calls in flight in this gateway per endpoint and model (every configured pair, zeros included)."""
    out: dict[str, dict[str, int]] = {}
    state = deps.extra.get("state")
    if state is not None:
        for endpoint in state.catalog.endpoints.values():
            out[endpoint.endpoint_id] = {model: 0 for model in endpoint.models}
    router = deps.extra.get("router")
    for (endpoint_id, model), count in list(getattr(router, "inflight", {}).items()):
        out.setdefault(endpoint_id, {})[model] = count
    return out


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The models this caller's tenant may use, in the OpenAI list shape."""
    key = _caller(request)
    catalog = _deps(request).extra["state"].catalog
    data = [
        {"id": model.model_id, "object": "model", "created": int(model.occurred_at.timestamp()),
         "owned_by": "switchyard"}
        for model in catalog.models_for(key.tenant_id)
    ]
    return _json({"object": "list", "data": data})


@get("/api/token_counts")
async def token_counts(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Token totals from the metering projection: all of them for an admin, the caller's tenant otherwise."""
    key = _caller(request)
    return _json(await _ask(request, subjects.METERING_QUERY, {"tenant_id": _scope(key)}))


@get("/api/usage")
async def usage(request: Request[Any, Any, Any]) -> Response[bytes]:
    """In-flight calls per endpoint and model (operators), and token usage per endpoint and model."""
    key = _caller(request)
    tokens = _any.decode(await _ask(request, subjects.METERING_QUERY, {"query": "usage", "tenant_id": _scope(key)}))
    counts = inflight_counts(_deps(request)) if key.role == "admin" else {}
    return _json({"usage_counts": counts, "token_usage_counts": tokens["token_usage_counts"]})


@post("/api/stats", status_code=200)
async def stats(request: Request[Any, Any, Any]) -> Response[bytes]:
    """One model's tokens, time series and distribution over endpoints; everyone's or one tenant's."""
    key = _caller(request)
    body = await _body(request, StatsRequest)
    if not body.model:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "Missing required field 'model'", "model"))
    model = _deps(request).extra["state"].catalog.resolve_model(body.model) or body.model
    query = {"query": "stats", "model": model, "tenant_id": _scope(key, body.tenant_id), "since": body.since}
    return _json(await _ask(request, subjects.METERING_QUERY, query))


@post("/api/aggregate_time_series_days", status_code=200)
async def aggregate_time_series_days(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Show minutes older than `days` days by day; `trim_old` also drops them. Idempotent. Operators only."""
    require_admin(_caller(request))
    body = await _body(request, RollupRequest)
    return _json(await _ask(request, subjects.METERING_COMMAND, {"days": body.days, "trim_old": body.trim_old}))


@get("/api/config")
async def config(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The endpoints this gateway routes to, with their health (never credentials)."""
    key = _caller(request)
    circuits = _deps(request).extra.get("circuits")
    admin = key.role == "admin"
    models = None if admin else {m.model_id for m in _deps(request).extra["state"].catalog.models_for(key.tenant_id)}
    endpoints = []
    for e in _visible_endpoints(request, key):
        entry: dict[str, Any] = {"id": e.endpoint_id, "url": e.base_url, "provider": e.provider_id,
                                 "models": [m for m in e.models if models is None or m in models],
                                 "priority": e.priority}
        if admin:
            entry.update(weight=e.weight, max_concurrent=e.max_concurrent, timeout_s=e.timeout_s)
        health_ = endpoint_health(circuits, e)
        entry["status"] = health_["status"]
        for field in ("version", "detail", "circuit"):
            if field in health_:
                entry[field] = health_[field]
        endpoints.append(entry)
    return _json({"endpoints": endpoints})


@get("/api/usage-stream")
async def usage_stream(request: Request[Any, Any, Any]) -> Stream:
    """Server-Sent Events: a usage snapshot now, then one each time usage events arrive."""
    key = _caller(request)
    deps = _deps(request)
    tenant = _scope(key)
    hub = deps.extra["usage_stream"]
    watcher = await hub.watch(tenant, {})           # subscribed first: no event falls between baseline and feed
    try:
        baseline = _any.decode(await _ask(request, subjects.METERING_QUERY, {"query": "usage", "tenant_id": tenant}))
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


# Every route but /health, which replaces the service default (create_service_app(health_handler=health)).
ROUTES = [list_models, token_counts, usage, stats, aggregate_time_series_days, config, usage_stream]
