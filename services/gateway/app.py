"""The gateway: the one public HTTP port. Inference calls take the RSGI hot path; the rest is Litestar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.service import Deps, create_service_app, run
from switchyard_gateway.kit.settings import Settings
from switchyard_gateway.quotas.periods import key_prefix
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway import http1
from switchyard_gateway.services.gateway.api.admin import admin_router
from switchyard_gateway.services.gateway.edge.auth import AuthConfig, configure as configure_auth
from switchyard_gateway.services.gateway.pipeline.cache import ResponseCache
from switchyard_gateway.services.gateway.state.circuits import Circuits
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.gateway.api import monitoring
from switchyard_gateway.services.gateway.api.ollama_listings import OLLAMA_ROUTES
from switchyard_gateway.services.gateway.pipeline.failover import Failover
from switchyard_gateway.services.gateway.pipeline.proxy import Proxy
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.api.quotas import quota_route_handlers
from switchyard_gateway.services.gateway.pipeline.routing import Router
from switchyard_gateway.services.gateway.edge.rsgi import GatewayRSGI
from switchyard_gateway.services.gateway.pipeline.usage import OutcomeBatcher, UsagePublisher
from switchyard_gateway.services.gateway.api.usage_stream import UsageHub
from switchyard_gateway.services.gateway.console.routes import CONSOLE_ROUTES

_encode = msgspec.json.Encoder().encode


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return Response(exc.render(), status_code=exc.status, headers=exc.headers, media_type="application/json")


def _service_error(_: Request[Any, Any, Any], exc: ServiceError) -> Response[bytes]:
    return Response(_encode({"error": exc.body}), status_code=exc.status, media_type="application/json")


def _validation_error(_: Request[Any, Any, Any], exc: msgspec.MsgspecError) -> Response[bytes]:
    text = str(exc)
    field = text.split("at `$.", 1)[1].rstrip("`").split("[", 1)[0] if "at `$." in text else None
    code = "INVALID_JSON" if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError) \
        else "VALIDATION_ERROR"
    return Response(_encode({"error": ErrorBody(code, text, field)}), status_code=400, media_type="application/json")


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return Response(_encode({"error": exc.detail}), status_code=exc.status_code, headers=exc.headers or None,
                    media_type="application/json")


def create_app(settings: Settings | None = None) -> GatewayRSGI:
    settings = settings or Settings.from_env()
    holder: list[GatewayRSGI] = []
    try:                                         # the response cache: a bad mode stops the gateway at once
        cache = ResponseCache(Valkey(settings.redis_url), key_prefix(settings.cache_prefix, settings.database_url, "c"),
                              settings.cache, settings.cache_ttl_s, settings.cache_max_bytes, settings.cache_timeout_s)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    configure_auth(AuthConfig.from_settings(settings))      # single-user or multi-tenant (keys and JWTs)

    async def start(deps: Deps) -> None:
        assert deps.nc is not None
        state = LocalState()
        await state.start(deps.nc, settings.connect_timeout_s)
        circuits = Circuits()                      # breaker states and probe health, fed by ROUTING
        await circuits.start(deps.nc, settings.connect_timeout_s)
        deps.extra["circuits"] = circuits
        pool = http1.Pool(max_connections_per_host=settings.upstream_pool_size,
                          connect_timeout_s=settings.upstream_connect_timeout_s)
        publisher = UsagePublisher(deps.nc, Path(settings.spool_dir))
        deps.spawn(publisher.run(), "usage-publisher")
        deps.extra.update(state=state, pool=pool, usage=publisher)
        deps.extra["quota"] = await QuotaClient.start(deps.nc, settings, state)   # limits feed + Valkey reservations
        metrics.USAGE_PENDING.set_function(lambda: publisher.pending)
        outcomes = OutcomeBatcher(deps.nc, settings.instance or f"gw{os.getpid()}")
        router = Router(state.catalog, deps.extra.get("circuits"))
        deps.extra["router"] = router
        metrics.watch_state(deps)                  # in-flight and breaker gauges, read at scrape time
        deps.extra["usage_stream"] = UsageHub(deps.nc, lambda: monitoring.inflight_counts(deps))   # SSE fan-out
        failover = Failover(router, pool, outcomes, settings)
        deps.extra["cache"] = cache
        holder[0].proxy = Proxy(state, router, failover, publisher, settings.max_body_bytes,
                                quota=deps.extra.get("quota"), cache=cache)

    async def stop(deps: Deps) -> None:
        holder[0].proxy = None
        quota: QuotaClient | None = deps.extra.get("quota")
        if quota is not None:
            await quota.close()
        cache: ResponseCache | None = deps.extra.get("cache")
        if cache is not None:
            await cache.close()
        publisher: UsagePublisher | None = deps.extra.get("usage")
        if publisher is not None:
            await publisher.drain()
        pool = deps.extra.get("pool")
        if pool is not None:
            await pool.close()

    litestar = create_service_app(
        "gateway", settings, start, database=False, stop=stop,
        route_handlers=[admin_router, *monitoring.ROUTES, *OLLAMA_ROUTES, *quota_route_handlers, *CONSOLE_ROUTES],
        health_handler=monitoring.health,
        exception_handlers={
            GatewayError: _gateway_error, ServiceError: _service_error,
            msgspec.MsgspecError: _validation_error, HTTPException: _http_error,
        },
        request_max_body_size=settings.max_body_bytes,
    )
    app = GatewayRSGI(litestar)
    holder.append(app)
    return app


def main() -> None:
    # RSGI: measured fastest for the hot path (docs/performance.md)
    run("switchyard_gateway.services.gateway.app:create_app", Settings.from_env(), interface="rsgi")
