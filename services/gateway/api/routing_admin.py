"""Admin routes about routing under /api/admin/: endpoint tests, registry status and refresh (probes now), and
circuit breakers; answered by the router's leader over NATS, with health as this gateway follows it."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, Router, get, post
from litestar.params import FromPath

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.contracts.routing import CircuitChanged, ProbeCompleted
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.api.common import AppDeps, admin_guard, ask, json_response
from switchyard_gateway.services.gateway.api.health import credential_missing
from switchyard_gateway.services.gateway.deps import Deps

_refresh = msgspec.json.Decoder(m.RefreshReply)
_probe = msgspec.json.Decoder(ProbeCompleted)
_changed = msgspec.json.Decoder(CircuitChanged)
_any = msgspec.json.Decoder()


def _endpoint(deps: Deps, endpoint_id: str) -> tuple[EndpointRegistered, str]:
    """The endpoint as this gateway's catalog has it, and its provider's kind; 404 if unknown."""
    catalog = deps.catalog
    endpoint = catalog.registered.get(endpoint_id)
    if endpoint is None:
        raise ServiceError(404, m.ErrorBody("ENDPOINT_NOT_FOUND", f"Endpoint '{endpoint_id}' not found", "endpoint_id"))
    provider = catalog.providers.get(endpoint.provider_id)
    return endpoint, provider.kind if provider is not None else "openai-compatible"


def _probe_view(probe: ProbeCompleted) -> dict[str, Any]:
    return {"endpoint_id": probe.endpoint_id, "success": probe.ok, "latency_ms": probe.latency_ms,
            "error": probe.error or None, "code": None if probe.ok else "CONNECTIVITY_ERROR",
            "status": probe.status or None, "models": list(probe.models),
            "loaded": list(probe.loaded), "version": probe.version or None, "tested_at": probe.occurred_at}


async def _test(deps: Deps, endpoint_id: str) -> dict[str, Any]:
    endpoint, kind = _endpoint(deps, endpoint_id)
    timeout_s = min(endpoint.timeout_s, 10.0)
    command = m.TestEndpoint(endpoint_id=endpoint_id, kind=kind, base_url=endpoint.base_url,  # type: ignore[arg-type]
                             api_key_ref=endpoint.api_key_ref, timeout_s=timeout_s)
    return _probe_view(_probe.decode(await ask(deps, subjects.ROUTER_COMMAND, command, timeout_s + 5)))


@post("/endpoints/{endpoint_id:str}/test", status_code=200)
async def test_endpoint(deps: AppDeps, endpoint_id: FromPath[str]) -> Response[bytes]:
    """A real, unbilled probe of one endpoint: latency and models, or the error."""
    return json_response(await _test(deps, endpoint_id))


@post("/providers/{provider_id:str}/test", status_code=200)
async def test_provider(deps: AppDeps, provider_id: FromPath[str]) -> Response[bytes]:
    """Every endpoint of a provider, probed."""
    catalog = deps.catalog
    if provider_id not in catalog.providers:
        raise ServiceError(404, m.ErrorBody("PROVIDER_NOT_FOUND", f"Provider '{provider_id}' not found", "provider_id"))
    results = [await _test(deps, e.endpoint_id) for e in catalog.registered.values() if e.provider_id == provider_id]
    answer: dict[str, Any] = {"provider_id": provider_id,
                              "success": bool(results) and all(r["success"] for r in results), "endpoints": results}
    if not results:        # nothing was tested: say so, as a failed test does (it said only `success: false`)
        answer.update(error=f"Provider '{provider_id}' has no endpoints to test", code="CONNECTIVITY_ERROR")
    elif not answer["success"]:
        failed = next(r for r in results if not r["success"])
        answer.update(error=f"endpoint '{failed.get('endpoint_id')}': {failed.get('error')}", code="CONNECTIVITY_ERROR")
    return json_response(answer)


@get(["/registry/status", "/providers/registry-status"])
async def registry_status(deps: AppDeps) -> Response[bytes]:
    """Counts and log position from the registry; per-endpoint breaker and last probe from local state."""
    status = _any.decode(await ask(deps, subjects.REGISTRY_QUERY, m.RegistryQuery("status")))
    circuits = deps.circuits
    catalog = deps.catalog
    endpoints = []
    for endpoint_id, endpoint in sorted(catalog.registered.items()):
        health = circuits.describe(endpoint_id)
        probe = health["probe"]
        missing = credential_missing(endpoint)
        healthy = False if missing else None if probe is None else bool(probe["ok"]) and health["circuit"] != "open"
        endpoints.append({**health, "provider_id": endpoint.provider_id, "base_url": endpoint.base_url,
                          "credential_missing": missing, "healthy": healthy})
    return json_response({**status, "last_refresh": circuits.last_probe_at, "endpoints": endpoints})


@post(["/registry/refresh", "/providers/refresh-registry"], status_code=200)
async def registry_refresh(deps: AppDeps) -> Response[bytes]:
    """Probe every endpoint now; answer once the results (and any discovered models) are visible here."""
    reply = _refresh.decode(await ask(deps, subjects.ROUTER_COMMAND, m.RefreshProbes(), 60.0))
    probed = reply.probed or [m.ProbeRef(p.endpoint_id, str(p.event_id), p.ok) for p in reply.probes]
    await deps.circuits.wait_for([r.event_id for r in probed])
    await deps.state.wait_for(set(reply.registry_event_ids))
    whole = {p.endpoint_id: p for p in reply.probes}          # empty when the round did not fit one NATS message
    views = []
    for ref in probed:
        probe = whole.get(ref.endpoint_id) or deps.circuits.probe(ref.endpoint_id)
        views.append(_probe_view(probe) if probe is not None else {
            "endpoint_id": ref.endpoint_id, "success": ref.ok, "code": None if ref.ok else "CONNECTIVITY_ERROR"})
    return json_response({"probed": len(probed), "healthy": sum(1 for r in probed if r.ok),
                          "discovered": len(reply.registry_event_ids), "endpoints": views})


@get(["/circuits", "/circuit-breakers"])
async def list_circuits(deps: AppDeps) -> Response[bytes]:
    """Every endpoint's breaker as the router's leader holds it."""
    return json_response(await ask(deps, subjects.ROUTER_QUERY, m.RouterQuery()))


@get(["/circuits/{endpoint_id:str}", "/circuit-breakers/{endpoint_id:str}"])
async def get_circuit(deps: AppDeps, endpoint_id: FromPath[str]) -> Response[bytes]:
    """One endpoint's breaker (404 ENDPOINT_NOT_FOUND if neither registry nor router knows it)."""
    query = m.RouterQuery(endpoint_id=endpoint_id)
    return json_response(await ask(deps, subjects.ROUTER_QUERY, query))


@post(["/circuits/{endpoint_id:str}/reset", "/circuit-breakers/{endpoint_id:str}/reset"], status_code=200)
async def reset_circuit(deps: AppDeps, endpoint_id: FromPath[str]) -> Response[bytes]:
    """Close a breaker now; answer once this gateway routes by the new state."""
    _endpoint(deps, endpoint_id)
    change = _changed.decode(await ask(deps, subjects.ROUTER_COMMAND, m.ResetCircuit(endpoint_id=endpoint_id)))
    await deps.circuits.wait_for([str(change.event_id)])
    return json_response({"endpoint_id": endpoint_id, "state": change.state, "previous": change.previous,
                  "reason": change.reason})


routing_admin_router = Router(
    path="/api/admin",
    guards=[admin_guard],
    route_handlers=[test_endpoint, test_provider, registry_status, registry_refresh, list_circuits, get_circuit,
                    reset_circuit],
)

ROUTES = [routing_admin_router]
