"""The admin API under /api/admin/: commands and queries answered by the registry over NATS."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from libs.contracts import messages as m
from libs.contracts import subjects
from libs.contracts.codec import encode
from libs.kit import natsio
from services.gateway.auth import authenticate, require_admin

_reply = msgspec.json.Decoder(m.CommandReply)
_any = msgspec.json.Decoder()


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only a live key with the admin role passes (401 / 403 otherwise)."""
    require_admin(authenticate(connection.app.state.deps.extra["state"].catalog, connection.headers))


async def run_command(request: Request[Any, Any, Any], command: m.Command, status: int = 200) -> Response[bytes]:
    """Send a command to the registry and wait until this gateway's catalog shows its events."""
    deps = request.app.state.deps
    raw = await natsio.request(deps.nc, subjects.REGISTRY_COMMAND, encode(command), deps.settings.request_timeout_s)
    reply = _reply.decode(raw)
    await deps.extra["state"].wait_for({str(e.event_id) for e in reply.events})
    body: dict[str, Any] = {"changed": bool(reply.events)}
    if reply.key is not None:
        body["key"] = reply.key          # shown once, never stored in plaintext
    if reply.key_id is not None:
        body["key_id"] = reply.key_id
    if reply.events:
        body["resource"] = {k: v for k, v in msgspec.to_builtins(reply.events[-1]).items()
                            if k not in ("type", "event_id", "occurred_at", "key_sha256")}
    return Response(encode(body), status_code=status if reply.events else 200, media_type="application/json")


async def run_query(request: Request[Any, Any, Any], query: m.RegistryQuery) -> Response[bytes]:
    deps = request.app.state.deps
    raw = await natsio.request(deps.nc, subjects.REGISTRY_QUERY, encode(query), deps.settings.request_timeout_s)
    return Response(raw, media_type="application/json")


async def _body(request: Request[Any, Any, Any], kind: type[m.Command], **path: Any) -> m.Command:
    data = _any.decode(await request.body() or b"{}")
    if not isinstance(data, dict):
        raise msgspec.ValidationError("Expected a JSON object")
    return msgspec.convert({**data, **path}, kind)


def _crud(resource: str, id_field: str, register: type[m.Command], remove: type[m.Command]) -> list[Any]:
    @get(f"/{resource}", name=f"list_{resource}")
    async def list_(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await run_query(request, m.RegistryQuery(resource))  # type: ignore[arg-type]

    @get(f"/{resource}/{{item_id:str}}", name=f"get_{resource}")
    async def get_(request: Request[Any, Any, Any], item_id: str) -> Response[bytes]:
        return await run_query(request, m.RegistryQuery(resource, id=item_id))  # type: ignore[arg-type]

    @post(f"/{resource}", name=f"create_{resource}")
    async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await run_command(request, await _body(request, register), status=201)

    @put(f"/{resource}/{{item_id:str}}", name=f"replace_{resource}")
    async def replace(request: Request[Any, Any, Any], item_id: str) -> Response[bytes]:
        return await run_command(request, await _body(request, register, **{id_field: item_id}))

    @delete(f"/{resource}/{{item_id:str}}", name=f"delete_{resource}", status_code=200)
    async def remove_(request: Request[Any, Any, Any], item_id: str) -> Response[bytes]:
        return await run_command(request, msgspec.convert({id_field: item_id}, remove))

    return [list_, get_, create, replace, remove_]


@post("/tenants/{tenant_id:str}/keys")
async def issue_key(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    return await run_command(request, await _body(request, m.IssueKey, tenant_id=tenant_id), status=201)


@get("/tenants/{tenant_id:str}/keys")
async def list_keys(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("keys", tenant_id=tenant_id))


@delete("/keys/{key_id:str}", status_code=200)
async def revoke_key(request: Request[Any, Any, Any], key_id: str) -> Response[bytes]:
    return await run_command(request, m.RevokeKey(key_id=key_id))


@post("/tenants/{tenant_id:str}/models")
async def assign_model(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    return await run_command(request, await _body(request, m.AssignModel, tenant_id=tenant_id), status=201)


@get("/tenants/{tenant_id:str}/models")
async def list_assignments(request: Request[Any, Any, Any], tenant_id: str) -> Response[bytes]:
    return await run_query(request, m.RegistryQuery("assignments", tenant_id=tenant_id))


admin_router = Router(
    path="/api/admin",
    guards=[admin_guard],
    route_handlers=[
        *_crud("tenants", "tenant_id", m.CreateTenant, m.RemoveTenant),
        *_crud("providers", "provider_id", m.RegisterProvider, m.RemoveProvider),
        *_crud("endpoints", "endpoint_id", m.RegisterEndpoint, m.RemoveEndpoint),
        *_crud("models", "model_id", m.RegisterModel, m.RemoveModel),
        issue_key, list_keys, revoke_key, assign_model, list_assignments,
    ],
)
