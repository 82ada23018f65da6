"""Read-only routes beside the hot path: /v1/models, /api/token_counts, /api/config."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from libs.contracts import subjects
from libs.contracts.codec import encode
from libs.contracts.messages import TokenCountsQuery
from libs.kit import natsio
from services.gateway.auth import authenticate


def _caller(request: Request[Any, Any, Any]) -> Any:
    return authenticate(request.app.state.deps.extra["state"].catalog, request.headers)


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The models this caller's tenant may use, in the OpenAI list shape."""
    key = _caller(request)
    catalog = request.app.state.deps.extra["state"].catalog
    data = [
        {"id": model.model_id, "object": "model", "created": int(model.occurred_at.timestamp()),
         "owned_by": "switchyard"}
        for model in catalog.models_for(key.tenant_id)
    ]
    return Response(encode({"object": "list", "data": data}), media_type="application/json")


@get("/api/token_counts")
async def token_counts(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Token totals from the metering projection: all of them for an admin, the caller's tenant otherwise."""
    key = _caller(request)
    deps = request.app.state.deps
    query = TokenCountsQuery(tenant_id=None if key.role == "admin" else key.tenant_id)
    raw = await natsio.request(deps.nc, subjects.METERING_QUERY, encode(query), deps.settings.request_timeout_s)
    return Response(raw, media_type="application/json")


@get("/api/config")
async def config(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The endpoints this gateway routes to (no credentials)."""
    _caller(request)
    catalog = request.app.state.deps.extra["state"].catalog
    endpoints = [
        {"id": e.endpoint_id, "url": e.base_url, "provider": e.provider_id, "models": list(e.models),
         "priority": e.priority}
        for e in catalog.endpoints.values()
    ]
    return Response(encode({"endpoints": endpoints}), media_type="application/json")
