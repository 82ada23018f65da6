"""The gateway: the one public HTTP port. Inference calls take the RSGI hot path; the rest is Litestar."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from switchyard_gateway import http1
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.service import Runtime, create_service_app, run, serve_subscriptions
from switchyard_gateway.quotas.periods import key_prefix
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.api import admin, health, monitoring, quotas, routing_admin
from switchyard_gateway.services.gateway.api.ollama_listings import OLLAMA_ROUTES
from switchyard_gateway.services.gateway.api.usage_stream import UsageHub
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.auth import Authenticator
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.edge.rsgi import GatewayRSGI
from switchyard_gateway.services.gateway.pipeline.cache import ResponseCache
from switchyard_gateway.services.gateway.pipeline.failover import Failover
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.journal import Journal
from switchyard_gateway.services.gateway.pipeline.proxy import Proxy
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.pipeline.routing import Router
from switchyard_gateway.services.gateway.pipeline.usage import OutcomeBatcher, UsagePublisher
from switchyard_gateway.services.gateway.console.routes import CONSOLE_ROUTES
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.gateway.state.circuits import Circuits

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
    """The composition root: parts that need no I/O are built here, the rest at start; one Deps holds them."""
    settings = settings or Settings.from_env()
    try:                        # a bad cache mode stops the gateway at once
        cache = ResponseCache(Valkey(settings.redis_url), key_prefix(settings.cache_prefix, settings.database_url, "c"),
                              settings.cache, settings.cache_ttl_s, settings.cache_max_bytes, settings.cache_timeout_s)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if settings.quota_on_error not in ("open", "closed"):
        raise SystemExit(f"SWITCHYARD_QUOTA_ON_ERROR must be 'open' or 'closed', not '{settings.quota_on_error}'")
    state = LocalState()                    # the registry catalog, fed by REGISTRY
    circuits = Circuits()                   # breaker states and probe health, fed by ROUTING
    auth = Authenticator.from_settings(state.catalog, settings)     # single-user or multi-tenant (keys and JWTs)
    fallbacks = Fallbacks(state.catalog)
    router = Router(state.catalog, fallbacks, circuits)

    async def start(runtime: Runtime[Settings]) -> Deps:
        nc = runtime.nc
        await state.start(nc, settings.connect_timeout_s)
        await circuits.start(nc, settings.connect_timeout_s)
        upstreams = http1.Pool(max_connections_per_host=settings.upstream_pool_size,
                               connect_timeout_s=settings.upstream_connect_timeout_s)
        quota = await QuotaClient.start(nc, settings, state.catalog, fallbacks)   # limits feed + Valkey reservations
        journal = Journal(Path(settings.spool_dir), settings.instance or "gateway", fsync=settings.journal_fsync,
                          estimator=quota.estimator)
        publisher = UsagePublisher(nc, journal)
        await publisher.open()              # what the last life left is published first
        runtime.spawn(publisher.run(), "usage-publisher")
        outcomes = OutcomeBatcher(nc, settings.instance or f"gw{os.getpid()}")
        failover = Failover(router, upstreams, outcomes, settings)
        proxy = Proxy(auth, router, quota, failover, publisher, cache, settings.max_body_bytes,
                      settings.max_output_tokens)
        metrics.watch(router, circuits, state.catalog, publisher)       # gauges read at scrape time
        await serve_subscriptions(runtime, {}, None)     # answers $SRV.PING: /health counts every gateway instance
        return Deps(settings=settings, nc=nc, auth=auth, state=state, circuits=circuits, router=router, quota=quota,
                    usage=publisher, usage_stream=UsageHub(nc, router.inflight_counts), proxy=proxy,
                    cache=cache, upstreams=upstreams)

    async def stop(deps: Deps) -> None:
        await deps.quota.close()
        await deps.cache.close()
        await deps.usage.drain()
        await deps.upstreams.close()

    litestar = create_service_app(
        "gateway", settings, start, database=False, stop=stop,
        route_handlers=[*admin.ROUTES, *routing_admin.ROUTES, *quotas.ROUTES, *monitoring.ROUTES, *OLLAMA_ROUTES,
                        *CONSOLE_ROUTES],
        health_handler=health.health,
        exception_handlers={
            GatewayError: _gateway_error, ServiceError: _service_error,
            msgspec.MsgspecError: _validation_error, HTTPException: _http_error,
        },
        request_max_body_size=settings.max_body_bytes,
    )
    return GatewayRSGI(litestar)


def main() -> None:
    # RSGI: measured fastest for the hot path (docs/performance.md)
    run("switchyard_gateway.services.gateway.app:create_app", Settings.from_env(), interface="rsgi")
