"""The gateway: the one public HTTP port. Inference calls take the RSGI hot path; the rest is Litestar."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException, MethodNotAllowedException, NotFoundException

from switchyard_gateway import http1
from switchyard_gateway.contracts.messages import ErrorBody, Problem
from switchyard_gateway.kit.natsio import ServiceError, field_of
from switchyard_gateway.kit.service import Runtime, create_service_app, serve_subscriptions
from switchyard_gateway.quotas.periods import key_prefix
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.api import (
    admin, embedding_seeds, health, monitoring, quotas, routing_admin, sign_in, system_seeds, users, warmup,
)
from switchyard_gateway.services.gateway.api.common import metrics_guard
from switchyard_gateway.services.gateway.api.ollama_listings import OLLAMA_ROUTES
from switchyard_gateway.services.gateway.api.usage_stream import UsageHub
from switchyard_gateway.services.gateway.deps import Deps
from switchyard_gateway.services.gateway.edge.auth import Authenticator
from switchyard_gateway.services.gateway.edge.login_guard import LoginGuard
from switchyard_gateway.services.gateway.edge.rotations import Rotations
from switchyard_gateway.services.gateway.edge.tokens import Tokens
from switchyard_gateway.services.gateway.edge import errors, ws
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.edge.headers import Cors
from switchyard_gateway.services.gateway.edge.rsgi import GatewayRSGI
from switchyard_gateway.services.gateway.pipeline.cache import ResponseCache
from switchyard_gateway.services.gateway.pipeline.failover import Failover
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.journal import Journal
from switchyard_gateway.services.gateway.pipeline.proxy import Proxy
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.pipeline.routing import Router
from switchyard_gateway.services.gateway.pipeline.shared_inflight import SharedInflight
from switchyard_gateway.services.gateway.pipeline.stored_items import StoredItems
from switchyard_gateway.services.gateway.api.stored_responses import STORED_RESPONSE_ROUTES
from switchyard_gateway.services.gateway.api.conversations import CONVERSATION_ROUTES
from switchyard_gateway.services.gateway.pipeline.usage import OutcomeBatcher, UsagePublisher
from switchyard_gateway.services.gateway.console.routes import CONSOLE_ROUTES
from switchyard_gateway.services.gateway.openapi.routes import DOCS_ROUTES
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.gateway.state.circuits import Circuits
from switchyard_gateway.services.gateway.worker_metrics import WorkerMetrics

_encode = msgspec.json.Encoder().encode
GC_YOUNG_THRESHOLD = 20_000        # container allocations between collections of the youngest generation


def _error(request: Request[Any, Any, Any], error: GatewayError) -> Response[bytes]:
    return Response(errors.render_for(request.url.path, error), status_code=error.status, headers=error.headers,
                    media_type="application/json")


def _gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[bytes]:
    return _error(request, exc)


def error_body(body: ErrorBody, status: int) -> dict[str, Any]:
    """An admin error as clients read it: `{"error": {"code", "message", "field", "problems"}}`; a refused
    body also lists `validationErrors` (`[{"field", "message"}]`, the provider-admin API's spelling)."""
    shown: dict[str, Any] = msgspec.to_builtins(body)
    if status in (400, 422) and body.code not in ("INVALID_JSON",):
        if body.problems:
            shown["validationErrors"] = [{"field": p.path, "message": p.message} for p in body.problems]
        elif body.field:
            shown["validationErrors"] = [{"field": body.field, "message": body.message}]
    return {"error": shown}


def _service_error(request: Request[Any, Any, Any], exc: ServiceError) -> Response[bytes]:
    """A service's refusal: the admin shape on admin and monitoring routes, the door's shape on a door's."""
    if errors.shape_for(request.url.path) in errors.NESTED_SHAPES:
        return Response(_encode(error_body(exc.body, exc.status)), status_code=exc.status,
                        media_type="application/json")
    return _error(request, GatewayError(exc.body.message, status=exc.status, kind="invalid_request_error",
                                        code=exc.body.code.lower(), param=exc.body.field))


def _validation_error(request: Request[Any, Any, Any], exc: msgspec.MsgspecError) -> Response[bytes]:
    text = str(exc)
    field = field_of(text)
    code = "INVALID_JSON" if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError) \
        else "VALIDATION_ERROR"
    if code == "INVALID_JSON":          # as the doors say it (and the monitoring API's users know it)
        text = f"Malformed JSON in request body: {text}"
    if errors.shape_for(request.url.path) not in errors.NESTED_SHAPES:
        return _error(request, errors.BadRequest(text, code=code.lower(), param=field))
    return Response(_encode(error_body(ErrorBody(code, text, field), 400)), status_code=400,
                    media_type="application/json")


def _body_refused(request: Request[Any, Any, Any], exc: ClientException) -> Response[bytes]:
    """A typed request body Litestar could not read (malformed JSON, a wrong type, a field missing): 400 in the
    admin shape; any other client error as it is."""
    if exc.status_code != 400 or errors.shape_for(request.url.path) not in errors.NESTED_SHAPES:
        return _http_error(request, exc)
    details = [e for e in exc.extra if isinstance(e, dict)] if isinstance(exc.extra, list) else []
    if not details:      # the framework's own refusal of a Host (served by granian) is no body's fault
        host = exc.detail == "Invalid host header"
        body = ErrorBody("INVALID_HOST" if host else "INVALID_JSON",
                         str(exc.detail) if host else f"Malformed JSON in request body: {exc.detail}")
    else:
        problems = [Problem(_body_field(e), str(e.get("message", ""))) for e in details]
        body = ErrorBody("VALIDATION_ERROR", problems[0].message, problems[0].path or None, problems)
    return Response(_encode(error_body(body, 400)), status_code=400, media_type="application/json")


def _body_field(detail: dict[str, Any]) -> str:
    """The field a Litestar validation detail is about (a missing one is named in its message only)."""
    key, message = str(detail.get("key") or ""), str(detail.get("message", ""))
    if key in ("", "data"):
        return field_of(message) or ""
    return key


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """The web framework's refusals (no such route, method not allowed, a bad parameter) in the door's shape."""
    method, path = request.method, request.url.path
    if isinstance(exc, NotFoundException) and exc.detail == "Not Found":
        error: GatewayError = errors.RouteNotFound(method, path)
    elif isinstance(exc, MethodNotAllowedException):
        error = errors.MethodNotAllowed(method, path)
    else:
        error = errors.from_status(exc.status_code, str(exc.detail))
    error.headers = {**(exc.headers or {}), **error.headers}
    return _error(request, error)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything else: logged once, answered 500 in the door's shape."""
    structlog.get_logger().exception("gateway.unhandled", path=request.url.path, method=request.method,
                                     error=type(exc).__name__)
    return _error(request, GatewayError("Internal error", code="internal_error"))


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
    items = None                            # the Responses door's kept Responses and items (TTL 0: none)
    if settings.responses_store_ttl_s > 0:
        items = StoredItems(Valkey(settings.redis_url), key_prefix("", settings.database_url, "r"),
                            settings.responses_store_ttl_s, settings.max_body_bytes)
    state = LocalState()                    # the registry catalog, fed by REGISTRY
    circuits = Circuits()                   # breaker states and probe health, fed by ROUTING
    try:
        auth = Authenticator.from_settings(state.catalog, settings)  # single-user or multi-tenant (keys, JWTs, users)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    tokens = Tokens(settings.jwt_secret if auth.mode == "multi-tenant" else "", settings.jwt_issuer,
                    settings.access_token_ttl_s, settings.refresh_token_ttl_s)
    login_guard = LoginGuard(Valkey(settings.redis_url), key_prefix(settings.login_prefix, settings.database_url, "a"),
                             user_failures=settings.login_user_failures,
                             address_failures=settings.login_address_failures, backoff_s=settings.login_backoff_s,
                             backoff_max_s=settings.login_backoff_max_s, window_s=settings.login_window_s)
    rotations = Rotations(Valkey(settings.redis_url), key_prefix(settings.login_prefix, settings.database_url, "a"),
                          settings.refresh_reuse_grace_s)
    fallbacks = Fallbacks(state.catalog)
    shared = None
    base = settings.instance.removesuffix(f"-w{settings.worker}") or "gateway"      # the gateway its workers share
    if settings.worker:                     # one of several workers: concurrency caps count every worker's calls
        shared = SharedInflight(Path(settings.spool_dir) / ".workers" / f"{base}.inflight", settings.worker,
                                settings.workers)
    router = Router(state.catalog, fallbacks, circuits, shared)

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
        if items is not None:
            await items.warm()
        proxy = Proxy(auth, router, quota, failover, publisher, cache, settings.max_body_bytes,
                      settings.max_output_tokens, settings.access_log, items)
        metrics.watch(router, circuits, state.catalog, publisher)       # gauges read at scrape time
        if settings.worker:                 # one scrape shows every worker's calls
            siblings = WorkerMetrics(nc, base, settings.instance, settings.workers)
            await siblings.start()
            runtime.before_scrape.append(siblings.gather)
            runtime.registry = siblings.registry
        await serve_subscriptions(runtime, {}, None)     # answers $SRV.PING: /health counts every gateway instance
        # A call allocates hundreds of short-lived containers and leaves no cycles behind: what start-up built is
        # frozen out of the collector, and the youngest generation is collected less often (measured: the
        # collector took 8 % of the worker's CPU under load with the default threshold of 700).
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
        return Deps(settings=settings, nc=nc, auth=auth, tokens=tokens, login_guard=login_guard,
                    rotations=rotations, state=state,
                    circuits=circuits, router=router, quota=quota,
                    usage=publisher, usage_stream=UsageHub(nc, router.inflight_counts), proxy=proxy,
                    cache=cache, upstreams=upstreams)

    async def stop(deps: Deps) -> None:
        await deps.quota.close()
        await deps.cache.close()
        if items is not None:
            await items.close()
        await deps.login_guard.close()
        await deps.rotations.close()
        await deps.usage.drain()
        await deps.upstreams.close()

    litestar = create_service_app(
        "gateway", settings, start, database=False, stop=stop,
        route_handlers=[*admin.ROUTES, *routing_admin.ROUTES, *quotas.ROUTES, *monitoring.ROUTES, *OLLAMA_ROUTES,
                        *CONSOLE_ROUTES, *sign_in.ROUTES, *users.ROUTES, *warmup.ROUTES, *embedding_seeds.ROUTES,
                        *system_seeds.ROUTES, *STORED_RESPONSE_ROUTES, *CONVERSATION_ROUTES, *DOCS_ROUTES,
                        ws.upgrade_needed],
        health_handler=health.health, metrics_guards=[metrics_guard],
        exception_handlers={
            GatewayError: _gateway_error, ServiceError: _service_error,
            msgspec.MsgspecError: _validation_error, ClientException: _body_refused, HTTPException: _http_error,
            Exception: _unexpected,
        },
        request_max_body_size=settings.max_body_bytes,
    )
    return GatewayRSGI(litestar, Cors(settings.cors_origins))
