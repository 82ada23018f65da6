"""What the admin and monitoring routes share: the admin guard, the caller, requests to the owning service, JSON."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.handlers.base import BaseRouteHandler

from switchyard_gateway.catalog import rules
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import EndpointRegistered, KeyIssued
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge import errors
from switchyard_gateway.services.gateway.edge.auth import require_admin
from switchyard_gateway.services.gateway.edge.errors import GatewayError

Req = Request[Any, Any, Any]
AppDeps = NamedDependency[Deps]        # a route's `deps` parameter: the gateway's Deps, injected by name
_any = msgspec.json.Decoder()


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Only a live key with the admin role passes: 401 `INVALID_TOKEN` / 403 `FORBIDDEN` otherwise, in the admin
    API's shape (`{"error": {"code", "message"}}`) on every route it guards, as their other refusals are."""
    deps: Deps = connection.app.state.deps
    try:
        require_admin(deps.auth.authenticate(connection.headers))
    except GatewayError as exc:
        raise ServiceError(exc.status, ErrorBody(errors.admin_code(exc), exc.message)) from None


def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """With `SWITCHYARD_METRICS_AUTH=admin`, /metrics (and its seed alias) is an operator's: it names every model,
    a tenant's own too, and the calls in flight on each endpoint, which a member's views do not show."""
    if connection.app.state.deps.settings.metrics_auth == "admin":
        admin_guard(connection, handler)


def caller(request: Req, deps: Deps) -> KeyIssued:
    """The request's live key (401 otherwise)."""
    return deps.auth.authenticate(request.headers)


def scope_of(key: KeyIssued, asked: str | None = None) -> str | None:
    """The tenant whose figures a caller reads: the one it asked for (another tenant's needs the admin role),
    else its own; None for an operator who asked for none (all of them). A name no tenant can have is a 400 (it
    reached metering's SQL as it was: a NUL was a 500)."""
    if asked and (problem := rules.identifier_problem(asked)):
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"tenant_id: {problem}", "tenant_id"))
    if asked and asked != key.tenant_id:
        require_admin(key)
    return asked or (None if key.role == "admin" else key.tenant_id)


async def ask(deps: Deps, subject: str, payload: Any, timeout_s: float | None = None) -> bytes:
    """A request to the service that owns the answer; its errors reach the client as they are (a request too large
    for one NATS message: 413, `natsio.request`)."""
    return await natsio.request(deps.nc, subject, encode(payload), timeout_s or deps.settings.request_timeout_s)


def check_bounds(fields: dict[str, Any]) -> None:
    """400 naming the first field that is too long, has too many items or is too large (`rules.bounds_problem`)."""
    oversized = rules.bounds_problem(fields)
    if oversized is not None:
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", oversized[1], oversized[0]))


def read_json(raw: bytes, decode: Any = None) -> Any:
    """A JSON body decoded (by `decode`, else as any value); nesting too deep to read is a 400, not a crash, and a
    number too large for a float names the field it is in (msgspec says only `$[...]` of an untyped object)."""
    try:
        return (decode or _any.decode)(raw)
    except RecursionError:
        raise ServiceError(400, ErrorBody("INVALID_JSON", "the body is nested too deeply to read")) from None
    except msgspec.ValidationError as exc:
        if decode is None and str(exc).startswith(OUT_OF_RANGE) and (at := _out_of_range(raw)):
            raise msgspec.ValidationError(f"{OUT_OF_RANGE} - at `${at}`") from None
        raise


OUT_OF_RANGE = "Number out of range"
_exact = msgspec.json.Decoder(float_hook=Decimal)


def _out_of_range(raw: bytes) -> str | None:
    """Where in a JSON document the first number too large for a float is (`.username`, `.a[2].b`), or None."""
    def walk(value: Any, at: str) -> str | None:
        if isinstance(value, Decimal):
            return at if not math.isfinite(float(value)) else None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            found = walk(item, f"{at}.{key}" if isinstance(key, str) else f"{at}[{key}]")
            if found is not None:
                return found
        return None

    try:
        return walk(_exact.decode(raw), "")
    except (msgspec.MsgspecError, RecursionError):
        return None


def json_response(body: Any, status: int = 200) -> Response[bytes]:
    """A JSON reply: bytes as they are (already encoded by the owning service), anything else encoded."""
    return Response(body if isinstance(body, bytes) else encode(body), status_code=status,
                    media_type="application/json")


async def json_object(request: Req) -> dict[str, Any]:
    """The request body as a JSON object (empty: `{}`); anything else is a validation error."""
    data = read_json(await request.body() or b"{}")
    if not isinstance(data, dict):
        raise msgspec.ValidationError("Expected a JSON object")
    return data


def visible_endpoints(deps: Deps, key: KeyIssued | None) -> list[EndpointRegistered]:
    """Every endpoint for an operator (or with no caller); for a tenant, those serving a model it may use."""
    catalog = deps.catalog
    endpoints = list(catalog.endpoints.values())
    if key is None or key.role == "admin":
        return endpoints
    models = {m.model_id for m in catalog.models_for(key.tenant_id)}
    return [e for e in endpoints if models & set(e.models)]
