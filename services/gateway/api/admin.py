"""The admin API under /api/admin/: registry commands and queries answered by the registry, breaker and
probe commands answered by the router's leader, both over NATS.

POST creates (409 CONFLICT if the resource exists), PUT updates what the body names
(404 if it does not exist), DELETE removes. Errors are `{"error": {"code", "message", "field"}}`.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from litestar import Request, Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.routing import CircuitChanged, ProbeCompleted
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.edge.auth import authenticate, require_admin

_reply = msgspec.json.Decoder(m.CommandReply)
_refresh = msgspec.json.Decoder(m.RefreshReply)
_probe = msgspec.json.Decoder(ProbeCompleted)
_changed = msgspec.json.Decoder(CircuitChanged)
_any = msgspec.json.Decoder()
_HIDDEN = ("type", "event_id", "occurred_at", "key_sha256", "mode")
Req = Request[Any, Any, Any]


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only a live key with the admin role passes (401 / 403 otherwise)."""
    require_admin(authenticate(connection.app.state.deps.extra["state"].catalog, connection.headers))


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(encode(body), status_code=status, media_type="application/json")


async def ask(request: Req, subject: str, payload: Any, timeout_s: float | None = None) -> bytes:
    deps = request.app.state.deps
    return await natsio.request(deps.nc, subject, encode(payload), timeout_s or deps.settings.request_timeout_s)


async def run_command(request: Req, command: m.Command, status: int = 200) -> Response[bytes]:
    """Send a command to the registry and wait until this gateway's catalog shows its events."""
    reply = _reply.decode(await ask(request, subjects.REGISTRY_COMMAND, command))
    await request.app.state.deps.extra["state"].wait_for({str(e.event_id) for e in reply.events})
    body: dict[str, Any] = {"changed": bool(reply.events)}
    if reply.key is not None:
        body["key"] = reply.key          # shown once, never stored in plaintext
    if reply.key_id is not None:
        body["key_id"] = reply.key_id
    if reply.events:
        body["resource"] = {k: v for k, v in msgspec.to_builtins(reply.events[-1]).items() if k not in _HIDDEN}
        body["events"] = len(reply.events)
    return _json(body, status if reply.events else 200)


async def run_query(request: Req, query: m.RegistryQuery) -> Response[bytes]:
    return Response(await ask(request, subjects.REGISTRY_QUERY, query), media_type="application/json")


async def _data(request: Req) -> dict[str, Any]:
    data = _any.decode(await request.body() or b"{}")
    if not isinstance(data, dict):
        raise msgspec.ValidationError("Expected a JSON object")
    return data


async def _body(request: Req, kind: type[m.Command], **path: Any) -> m.Command:
    return msgspec.convert({**await _data(request), **path}, kind)


async def _merged(request: Req, kind: type[m.Command], query: m.RegistryQuery, **path: Any) -> m.Command:
    """An update: the resource as the registry holds it, overlaid with what the body names."""
    current = _any.decode(await ask(request, subjects.REGISTRY_QUERY, query))
    return msgspec.convert({**current, **await _data(request), **path, "mode": "update"}, kind)


def _crud(resource: str, id_field: str, register: type[m.Command], remove: type[m.Command],
          any_id: bool = False) -> list[Any]:
    """List, get, create, update and delete one kind of resource. With `any_id` the id in the URL may hold
    slashes (model ids such as `/models/x.gguf`, sent as is or percent-encoded) and is read whole."""
    item = "{item_id:path}" if any_id else "{item_id:str}"

    def ident(request: Req, matched: Any) -> str:
        if not any_id:
            return matched
        return request.scope["raw_path"].decode().split(f"/{resource}/", 1)[1]

    @get(f"/{resource}", name=f"list_{resource}")
    async def list_(request: Req) -> Response[bytes]:
        return await run_query(request, m.RegistryQuery(resource))  # type: ignore[arg-type]

    @get(f"/{resource}/{item}", name=f"get_{resource}")
    async def get_(request: Req, item_id: Any) -> Response[bytes]:
        return await run_query(request, m.RegistryQuery(resource, id=ident(request, item_id)))  # type: ignore[arg-type]

    @post(f"/{resource}", name=f"create_{resource}")
    async def create(request: Req) -> Response[bytes]:
        return await run_command(request, await _body(request, register, mode="create"), status=201)

    @put(f"/{resource}/{item}", name=f"update_{resource}")
    async def update(request: Req, item_id: Any) -> Response[bytes]:
        key = ident(request, item_id)
        query = m.RegistryQuery(resource, id=key)  # type: ignore[arg-type]
        return await run_command(request, await _merged(request, register, query, **{id_field: key}))

    @delete(f"/{resource}/{item}", name=f"delete_{resource}", status_code=200)
    async def remove_(request: Req, item_id: Any) -> Response[bytes]:
        return await run_command(request, msgspec.convert({id_field: ident(request, item_id)}, remove))

    return [list_, get_, create, update, remove_]


@post("/tenants/{tenant_id:str}/keys")
async def issue_key(request: Req, tenant_id: str) -> Response[bytes]:
    return await run_command(request, await _body(request, m.IssueKey, tenant_id=tenant_id), status=201)


@get("/tenants/{tenant_id:str}/keys")
async def list_keys(request: Req, tenant_id: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("keys", tenant_id=tenant_id))


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(request: Req, key_id: str) -> Response[bytes]:
    return await run_command(request, m.RevokeKey(key_id=key_id))


@post("/tenants/{tenant_id:str}/models")
async def assign_model(request: Req, tenant_id: str) -> Response[bytes]:
    return await run_command(request, await _body(request, m.AssignModel, tenant_id=tenant_id, mode="create"), 201)


@get("/tenants/{tenant_id:str}/models")
async def list_assignments(request: Req, tenant_id: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("assignments", tenant_id=tenant_id))


@get("/tenants/{tenant_id:str}/models/{model_id:str}")
async def get_assignment(request: Req, tenant_id: str, model_id: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("assignments", id=f"{tenant_id}/{model_id}"))


@put("/tenants/{tenant_id:str}/models/{model_id:str}")
async def update_assignment(request: Req, tenant_id: str, model_id: str) -> Response[bytes]:
    query = m.RegistryQuery("assignments", id=f"{tenant_id}/{model_id}")
    return await run_command(request, await _merged(request, m.AssignModel, query, tenant_id=tenant_id,
                                                    model_id=model_id))


@delete("/tenants/{tenant_id:str}/models/{model_id:str}", status_code=200)
async def unassign_model(request: Req, tenant_id: str, model_id: str) -> Response[bytes]:
    return await run_command(request, m.UnassignModel(tenant_id=tenant_id, model_id=model_id))


# --- templates ---------------------------------------------------------------------------------


@get(["/templates", "/provider-templates"])
async def list_templates(request: Req) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("templates"))


@get(["/templates/{name:str}", "/provider-templates/{name:str}"])
async def get_template(request: Req, name: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("templates", id=name))


@post(["/templates/{name:str}/apply", "/provider-templates/{name:str}/apply"])
async def apply_template(request: Req, name: str) -> Response[bytes]:
    """`{"endpoint_id", "provider_id"?, "display_name"?, "customizations": {"base_url", "api_key_ref",
    "models", "priority", "weight", "max_concurrent", "timeout_s"}}` (customisations may also sit at the top)."""
    data = await _data(request)
    custom = data.pop("customizations", None) or {}
    if not isinstance(custom, dict):
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", "customizations must be an object", "customizations"))
    return await run_command(request, msgspec.convert({**data, **custom, "template": name}, m.ApplyTemplate), 201)


# --- endpoint health: test, status, refresh ------------------------------------------------------


def _endpoint(request: Req, endpoint_id: str) -> tuple[Any, str]:
    """The endpoint as this gateway's catalog has it, and its provider's kind; 404 if unknown."""
    catalog = request.app.state.deps.extra["state"].catalog
    endpoint = catalog.registered.get(endpoint_id)
    if endpoint is None:
        raise ServiceError(404, m.ErrorBody("ENDPOINT_NOT_FOUND", f"Endpoint '{endpoint_id}' not found", "endpoint_id"))
    provider = catalog.providers.get(endpoint.provider_id)
    return endpoint, provider.kind if provider is not None else "openai-compatible"


def _probe_view(probe: ProbeCompleted) -> dict[str, Any]:
    return {"endpoint_id": probe.endpoint_id, "success": probe.ok, "latency_ms": probe.latency_ms,
            "error": probe.error or None, "status": probe.status or None, "models": list(probe.models),
            "loaded": list(probe.loaded), "version": probe.version or None, "tested_at": probe.occurred_at}


async def _test(request: Req, endpoint_id: str) -> dict[str, Any]:
    endpoint, kind = _endpoint(request, endpoint_id)
    timeout_s = min(endpoint.timeout_s, 10.0)
    command = m.TestEndpoint(endpoint_id=endpoint_id, kind=kind, base_url=endpoint.base_url,  # type: ignore[arg-type]
                             api_key_ref=endpoint.api_key_ref, timeout_s=timeout_s)
    return _probe_view(_probe.decode(await ask(request, subjects.ROUTER_COMMAND, command, timeout_s + 5)))


@post("/endpoints/{endpoint_id:str}/test", status_code=200)
async def test_endpoint(request: Req, endpoint_id: str) -> Response[bytes]:
    """A real, unbilled probe of one endpoint: latency and models, or the error."""
    return _json(await _test(request, endpoint_id))


@post("/providers/{provider_id:str}/test", status_code=200)
async def test_provider(request: Req, provider_id: str) -> Response[bytes]:
    """Every endpoint of a provider, probed."""
    catalog = request.app.state.deps.extra["state"].catalog
    if provider_id not in catalog.providers:
        raise ServiceError(404, m.ErrorBody("PROVIDER_NOT_FOUND", f"Provider '{provider_id}' not found", "provider_id"))
    results = [await _test(request, e.endpoint_id) for e in catalog.registered.values() if e.provider_id == provider_id]
    return _json({"provider_id": provider_id, "success": bool(results) and all(r["success"] for r in results),
                  "endpoints": results})


@get(["/registry/status", "/providers/registry-status"])
async def registry_status(request: Req) -> Response[bytes]:
    """Counts and log position from the registry; per-endpoint breaker and last probe from local state."""
    deps = request.app.state.deps
    status = _any.decode(await ask(request, subjects.REGISTRY_QUERY, m.RegistryQuery("status")))
    circuits = deps.extra["circuits"]
    catalog = deps.extra["state"].catalog
    endpoints = []
    for endpoint_id, endpoint in sorted(catalog.registered.items()):
        health = circuits.describe(endpoint_id)
        probe = health["probe"]
        healthy = None if probe is None else bool(probe["ok"]) and health["circuit"] != "open"
        endpoints.append({**health, "provider_id": endpoint.provider_id, "base_url": endpoint.base_url,
                          "healthy": healthy})
    return _json({**status, "last_refresh": circuits.last_probe_at, "endpoints": endpoints})


@post(["/registry/refresh", "/providers/refresh-registry"], status_code=200)
async def registry_refresh(request: Req) -> Response[bytes]:
    """Probe every endpoint now; answer once the results (and any discovered models) are visible here."""
    deps = request.app.state.deps
    reply = _refresh.decode(await ask(request, subjects.ROUTER_COMMAND, m.RefreshProbes(), 60.0))
    await deps.extra["circuits"].wait_for([str(p.event_id) for p in reply.probes])
    await deps.extra["state"].wait_for(set(reply.registry_event_ids))
    return _json({"probed": len(reply.probes), "healthy": sum(1 for p in reply.probes if p.ok),
                  "discovered": len(reply.registry_event_ids), "endpoints": [_probe_view(p) for p in reply.probes]})


# --- export and import ---------------------------------------------------------------------------


@get("/registry/export")
async def registry_export(request: Req) -> Response[bytes]:
    """The registry as a `switchyard.yaml` document: JSON, or YAML with `?format=yaml`."""
    raw = await ask(request, subjects.REGISTRY_QUERY, m.RegistryQuery("export"))
    if request.query_params.get("format") == "yaml":
        return Response(yaml.safe_dump(_any.decode(raw), sort_keys=False).encode(), media_type="application/yaml")
    return Response(raw, media_type="application/json")


@post("/registry/import", status_code=200)
async def registry_import(request: Req) -> Response[bytes]:
    """Apply a document (JSON or YAML, the export's shape), all or nothing; every problem is reported."""
    text = (await request.body()).decode("utf-8", errors="replace")
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", f"not valid JSON or YAML: {exc}")) from None
    if not isinstance(doc, dict):
        raise ServiceError(400, m.ErrorBody("VALIDATION_ERROR", "expected an object with providers, endpoints, "
                                            "models and tenants"))
    return await run_command(request, m.ImportConfig(config=doc))


# --- circuit breakers ------------------------------------------------------------------------------


@get(["/circuits", "/circuit-breakers"])
async def list_circuits(request: Req) -> Response[bytes]:
    """Every endpoint's breaker as the router's leader holds it."""
    return Response(await ask(request, subjects.ROUTER_QUERY, m.RouterQuery()), media_type="application/json")


@get(["/circuits/{endpoint_id:str}", "/circuit-breakers/{endpoint_id:str}"])
async def get_circuit(request: Req, endpoint_id: str) -> Response[bytes]:
    """One endpoint's breaker (404 ENDPOINT_NOT_FOUND if neither registry nor router knows it)."""
    query = m.RouterQuery(endpoint_id=endpoint_id)
    return Response(await ask(request, subjects.ROUTER_QUERY, query), media_type="application/json")


@post(["/circuits/{endpoint_id:str}/reset", "/circuit-breakers/{endpoint_id:str}/reset"], status_code=200)
async def reset_circuit(request: Req, endpoint_id: str) -> Response[bytes]:
    """Close a breaker now; answer once this gateway routes by the new state."""
    _endpoint(request, endpoint_id)
    change = _changed.decode(await ask(request, subjects.ROUTER_COMMAND, m.ResetCircuit(endpoint_id=endpoint_id)))
    await request.app.state.deps.extra["circuits"].wait_for([str(change.event_id)])
    return _json({"endpoint_id": endpoint_id, "state": change.state, "previous": change.previous,
                  "reason": change.reason})


admin_router = Router(
    path="/api/admin",
    guards=[admin_guard],
    route_handlers=[
        *_crud("tenants", "tenant_id", m.CreateTenant, m.RemoveTenant),
        *_crud("providers", "provider_id", m.RegisterProvider, m.RemoveProvider),
        *_crud("endpoints", "endpoint_id", m.RegisterEndpoint, m.RemoveEndpoint),
        *_crud("models", "model_id", m.RegisterModel, m.RemoveModel, any_id=True),
        issue_key, list_keys, revoke_key, assign_model, list_assignments, get_assignment, update_assignment,
        unassign_model, list_templates, get_template, apply_template, test_endpoint, test_provider,
        registry_status, registry_refresh, registry_export, registry_import, list_circuits, get_circuit,
        reset_circuit,
    ],
)
