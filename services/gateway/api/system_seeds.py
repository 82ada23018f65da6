"""The provider-admin API's system routes and the embeddings service's metrics text, as aliases of what exists.

`GET /api/system/health` is `/health` (api/health.py) under the provider-admin API's path; `GET
/api/system/status` (admin) says whether each thing the system stands on answers now: NATS, the
database behind the log (the registry's own query), Valkey, and each service; `GET /api/v1/metrics/text`
is `/metrics`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from prometheus_client import generate_latest

from switchyard_gateway.kit.service import PROMETHEUS_MEDIA_TYPE
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.service import refresh_before_scrape
from switchyard_gateway.services.gateway.api.common import AppDeps, admin_guard, ask, json_response, metrics_guard
from switchyard_gateway.services.gateway.api.health import service_health
from switchyard_gateway.services.gateway.deps import Deps

PING_TIMEOUT_S = 1.0
STARTED = time.time()


async def _valkey(deps: Deps) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await deps.login_guard.valkey.call("PING")
    except Exception as exc:  # noqa: BLE001 — a status report, not a failure
        return {"status": "error", "detail": str(exc) or type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 3)}


async def _registry(deps: Deps) -> dict[str, Any]:
    try:
        return msgspec.json.decode(await ask(deps, subjects.REGISTRY_QUERY, m.RegistryQuery("status")))
    except ServiceError as exc:
        return {"error": exc.body.message, "database": {"status": "error", "detail": "the registry is not answering"}}


@get("/status")
async def system_status(deps: AppDeps) -> Response[bytes]:
    """Every dependency and service, each `ok` or `error` with why; 200 when all are ok, else 503."""
    registry, valkey, services = await asyncio.gather(_registry(deps), _valkey(deps), service_health(deps.nc))
    nats = {"status": "ok" if deps.nc is not None and deps.nc.is_connected else "error",
            # host and port alone: the URL's user part holds the services' NATS password
            "server": deps.nc.connected_url.netloc.rpartition("@")[2]
            if deps.nc is not None and deps.nc.connected_url else None}
    database = registry.pop("database", {"status": "error"})
    healthy = all(x["status"] == "ok" for x in (nats, database, valkey, *services.values()))
    return json_response({"status": "ok" if healthy else "error", "uptime_s": round(time.time() - STARTED, 1),
                          "nats": nats, "database": database, "valkey": valkey, "services": services,
                          "registry": registry}, 200 if healthy else 503)


@get("/api/v1/metrics/text", media_type=PROMETHEUS_MEDIA_TYPE, guards=[metrics_guard])
async def metrics_text(request: Request[Any, Any, Any]) -> Response[bytes]:
    """This gateway's Prometheus metrics, as `/metrics` serves them."""
    await refresh_before_scrape(request.app.state.runtime)
    return Response(generate_latest(request.app.state.runtime.registry), media_type=PROMETHEUS_MEDIA_TYPE)


ROUTES = [Router(path="/api/system", guards=[admin_guard], route_handlers=[system_status]), metrics_text]
