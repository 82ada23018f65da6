"""`GET /health`: the gateway, each endpoint (its breaker and last probe as this gateway follows them, never a
live call) and every peer service (a NATS micro PING); an operator sees the detail, anyone else statuses."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import msgspec
from litestar import Request, Response, get

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import EndpointRegistered, KeyIssued
from switchyard_gateway.services.gateway.api.common import AppDeps, json_response, visible_endpoints
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.pipeline.upstream import credential
from switchyard_gateway.services.gateway.state.circuits import Circuits

SERVICES = ("gateway", "registry", "metering", "router", "quota")   # every instance answers a NATS micro PING
PING_WAIT_S = 0.25
STRAGGLERS_S = 0.03      # once each service has answered, how long the other replicas get to answer too
_any = msgspec.json.Decoder()


def credential_missing(endpoint: EndpointRegistered) -> bool:
    """Whether the endpoint names a `${ENV_VAR}` credential that is not set in this gateway's environment."""
    return bool(endpoint.api_key_ref) and credential(endpoint) is None


def endpoint_health(circuits: Circuits | None, endpoint: EndpointRegistered) -> dict[str, Any]:
    """ok / error / unknown for one endpoint, from its credential, its breaker and its last probe (never a live
    call)."""
    if circuits is None:
        return {"status": "unknown", "detail": "endpoint health is not available"}
    state = circuits.state(endpoint.endpoint_id)
    probe = circuits.health(endpoint.endpoint_id)
    out: dict[str, Any] = {"circuit": state}
    if probe is not None:
        out.update(latency_ms=probe.get("latency_ms"), checked_at=probe.get("at"))
        if probe.get("version"):
            out["version"] = probe["version"]
    if credential_missing(endpoint):
        out.update(status="error", credential_missing=True,
                   detail=f"its credential {endpoint.api_key_ref} is not set in the gateway's environment")
    elif state == "open":
        out.update(status="error", detail=_circuit_reason(circuits, endpoint.endpoint_id) or "circuit open")
    elif probe is not None and not probe.get("ok"):
        out.update(status="error", detail=probe.get("error") or f"probe answered {probe.get('status')}")
    else:
        out["status"] = "ok" if probe is not None else "unknown"
    return out


def _circuit_reason(circuits: Circuits, endpoint_id: str) -> str:
    with contextlib.suppress(Exception):
        return str(circuits.describe(endpoint_id).get("circuit_reason") or "")
    return ""


async def service_health(nc: Any) -> dict[str, dict[str, Any]]:
    """Who answers a NATS micro PING within PING_WAIT_S: every instance of every service (the gateways too), by
    instance name (else its NATS micro id)."""
    seen: dict[str, dict[str, Any]] = {name: {"status": "error", "instances": 0, "detail": "not answering"}
                                       for name in SERVICES}
    if nc is None or not nc.is_connected:
        return {name: {"status": "error", "instances": 0, "detail": "NATS is unreachable"} for name in SERVICES}
    inbox = nc.new_inbox()
    done = asyncio.Event()

    async def on_pong(msg: Any) -> None:
        with contextlib.suppress(msgspec.MsgspecError):
            pong = _any.decode(msg.data)
            name, metadata = pong.get("name"), pong.get("metadata") or {}
            entry = seen.setdefault(name, {"status": "ok", "instances": 0})
            entry.update(status="ok", version=pong.get("version"))
            entry.pop("detail", None)
            members = entry.setdefault("members", [])
            member = metadata.get("instance") or pong.get("id")
            if member not in members:           # one instance may answer twice (the router's leader)
                members.append(member)
            entry["instances"] = len(members)
            if metadata.get("role") == "leader":
                entry["leader"] = member
            if all(seen[s]["status"] == "ok" for s in SERVICES):
                done.set()

    sub = await nc.subscribe(inbox, cb=on_pong)
    try:
        await nc.publish(subjects.SERVICE_PING, b"", reply=inbox)
        started = asyncio.get_running_loop().time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), PING_WAIT_S)
            # every service answered: give the other replicas of each a moment to answer too
            await asyncio.sleep(min(STRAGGLERS_S, max(0.0, started + PING_WAIT_S - asyncio.get_running_loop().time())))
    finally:
        await sub.unsubscribe()
    return seen


def usage_health(deps: Deps) -> dict[str, Any]:
    """The usage events this worker has not had acknowledged, and how long the parked ones have waited; parked
    longer than SWITCHYARD_USAGE_STALL_S, the gateway is not healthy (JetStream is taking none of them: the log
    and every figure built from it fall behind, though the journal keeps each event)."""
    usage = deps.usage
    waited = usage.waiting_s
    out: dict[str, Any] = {"usage_events_pending": usage.pending, "usage_events_parked": usage.journal.parked_count,
                           "usage_waiting_s": round(waited, 1)}
    if waited > deps.settings.usage_stall_s:
        out.update(status="error", detail=f"usage events have waited {waited:.0f} s for JetStream to take them "
                                          "(kept in the journal, published once it does)")
    return out


async def health_report(deps: Deps, key: KeyIssued | None) -> tuple[dict[str, Any], bool]:
    """The whole report as the caller may see it, and whether everything is healthy."""
    circuits = deps.circuits
    nats_ok = bool(deps.nc and deps.nc.is_connected)
    all_endpoints = list(deps.catalog.endpoints.values())
    endpoints = {e.endpoint_id: endpoint_health(circuits, e) for e in all_endpoints}
    services = await service_health(deps.nc)
    gateway = {"status": "ok" if nats_ok else "error", "nats": nats_ok, **usage_health(deps),
               "instance": deps.settings.instance or "gateway", "pid": os.getpid()}      # the worker answering
    healthy = gateway["status"] == "ok" and all(e["status"] != "error" for e in endpoints.values()) \
        and all(s["status"] == "ok" for s in services.values())
    report: dict[str, Any] = {
        "status": "ok" if healthy else "error",
        "gateway": gateway, "endpoints": endpoints, "services": services,
    }
    if key is None or key.role != "admin":       # a tenant or an anonymous probe: statuses, no details
        visible = {e.endpoint_id for e in visible_endpoints(deps, key)} if key is not None else set(endpoints)
        report["endpoints"] = {eid: {"status": e["status"]} for eid, e in endpoints.items() if eid in visible}
        report["services"] = {name: {"status": s["status"]} for name, s in services.items()}
        report["gateway"] = {"status": report["gateway"]["status"]}
    else:
        for endpoint in all_endpoints:
            endpoints[endpoint.endpoint_id]["url"] = endpoint.base_url
    return report, healthy


def _optional_caller(request: Request[Any, Any, Any], deps: Deps) -> KeyIssued | None:
    if not (request.headers.get("authorization") or request.headers.get("x-api-key")):
        return None
    try:
        return deps.auth.authenticate(request.headers)
    except GatewayError:
        return None


@get(["/health", "/api/system/health"])
async def health(request: Request[Any, Any, Any], deps: AppDeps) -> Response[bytes]:
    """200 when the gateway, every endpoint and every service are healthy, 503 otherwise, with the detail
    (`/api/system/health`: the provider-admin API's name for it)."""
    report, healthy = await health_report(deps, _optional_caller(request, deps))
    return json_response(report, 200 if healthy else 503)
