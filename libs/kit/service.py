"""The shape every service shares: a typed Runtime, a lifespan that builds the service's own Deps, /health and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from nats.aio.client import Client as NATS
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from switchyard_gateway.kit import eventlog, logs, natsio
from switchyard_gateway.kit.settings import ServiceSettings

BEFORE_SCRAPE_TIMEOUT_S = 2.0    # each refresh before a scrape gets this long; a late one keeps its old figures
DRAIN_TIMEOUT_S = 2.0           # on stop: NATS subscriptions finish their messages, the pool its queries, within this

D = TypeVar("D")                                       # a service's own Deps
S = TypeVar("S", bound=ServiceSettings)                # a service's own Settings


@dataclass
class Runtime(Generic[S]):
    """What the kit opens for every service: its name, settings, logger, NATS, the pool, background loops.

    Built once by the lifespan; the service's `start` turns it into the service's own frozen Deps.
    """

    name: str
    settings: S
    log: Any
    nc: NATS
    pool: asyncpg.Pool | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    before_scrape: list[Callable[[], Awaitable[None]]] = field(default_factory=list)   # gauges read at scrape time
    registry: Any = REGISTRY                            # what /metrics exposes (a gateway's workers: all of them)
    closing: bool = False                               # close_runtime began: NATS closing is ours

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run a background loop for the service's lifetime; a crash is logged and ends the process."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        task.add_done_callback(self._on_task_done)
        self.tasks.append(task)
        return task

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("service.task_crashed", task=task.get_name(), error=repr(exc))
            # A dead background loop leaves a half-alive service: exit and let the supervisor restart us.
            os.kill(os.getpid(), signal.SIGTERM)


# Prometheus's text format: the web framework adds `; charset=utf-8` to a text type itself (it said it twice)
PROMETHEUS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split("; charset")[0]

Starter = Callable[[Runtime[S]], Awaitable[D]]      # builds the service's own Deps from the runtime
Stopper = Callable[[D], Awaitable[None]]


async def open_runtime(name: str, settings: S, *, database: bool) -> Runtime[S]:
    """Connect to NATS (streams ensured) and, if asked, PostgreSQL (migrations applied)."""
    log = logs.configure(name, settings.log_level, settings.log_json)
    opened: list[Runtime[S]] = []

    async def closed(nc: NATS) -> None:
        if opened and not opened[0].closing:
            # not by us: the server closed it for a protocol error, and nats-py does not reconnect after one; or every
            # server refused the service's user on reconnecting (its password changed), and natsio closed it. A
            # service without NATS is half alive: exit and let the supervisor start it again (refused, it fails to
            # start, exit code 1, saying why).
            log.error("nats.closed_for_good", error=str(natsio.user_refused(nc) or nc.last_error or "") or None)
            os.kill(os.getpid(), signal.SIGTERM)

    nc = await natsio.connect(settings.nats_url, f"{name}{settings.instance}", settings.connect_timeout_s,
                              on_closed=closed)
    await natsio.ensure_streams(nc, settings.stream_replicas)
    pool = None
    if database:
        pool = await eventlog.create_pool(settings.database_url, settings.connect_timeout_s)
        async with pool.acquire() as conn:
            applied = await eventlog.migrate(conn)
        if applied:
            log.info("migrations.applied", migrations=applied)
    opened.append(Runtime(name=name, settings=settings, log=log, nc=nc, pool=pool))
    return opened[0]


async def close_runtime(runtime: Runtime[Any]) -> None:
    """Stop background loops (those that do not end within DRAIN_TIMEOUT_S are named in the log and left), then
    close NATS and the pool; each in its own `finally`."""
    runtime.closing = True
    for task in runtime.tasks:
        task.cancel()
    if runtime.tasks:
        ended, lingering = await asyncio.wait(runtime.tasks, timeout=DRAIN_TIMEOUT_S)
        for task in ended:
            if not task.cancelled():
                task.exception()                 # retrieved: how a loop ended is its own business by now
        if lingering:
            runtime.log.warning("service.tasks_lingering", tasks=sorted(t.get_name() for t in lingering))
    try:
        if runtime.nc is not None and not runtime.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runtime.nc.drain(), DRAIN_TIMEOUT_S)
    finally:
        if runtime.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runtime.pool.close(), DRAIN_TIMEOUT_S)


async def refresh_before_scrape(runtime: Runtime[Any]) -> None:
    """Run every `before_scrape` callback at once, each bounded by a timeout; a failure is logged, never raised."""

    async def one(callback: Callable[[], Awaitable[None]]) -> None:
        try:
            await asyncio.wait_for(callback(), BEFORE_SCRAPE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 — a scrape must not fail because one source is slow or down
            runtime.log.warning("metrics.refresh_failed",
                                callback=getattr(callback, "__qualname__", repr(callback)),
                                error=str(exc) or type(exc).__name__)

    await asyncio.gather(*(one(callback) for callback in runtime.before_scrape))


def health_checks(runtime: Runtime[Any]) -> dict[str, bool]:
    checks = {"nats": bool(runtime.nc and runtime.nc.is_connected)}
    if runtime.pool is not None:
        checks["postgres"] = not runtime.pool._closed  # noqa: SLF001 — asyncpg has no public flag
    return checks


def _provide_deps(state: State) -> Any:
    return state.deps


class StartFailed(Exception):
    """A service could not start (infrastructure away, a bad document) or was told to stop while starting
    (`stopped`: not a failure, so the process exits 0); the reason is already in its log."""

    def __init__(self, reason: str, stopped: bool = False) -> None:
        super().__init__(reason)
        self.stopped = stopped


@contextlib.asynccontextmanager
async def starting(log: Any) -> AsyncIterator[None]:
    """Start-up's frame: SIGTERM or SIGINT cancels it at once (an HTTP server heeds its signals only once it
    serves, so a service waiting for NATS would otherwise wait out its connect timeout), and a start that fails
    or is stopped says so in one log line and raises StartFailed."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    signalled: list[int] = []

    def cancel(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        loop.call_soon_threadsafe(task.cancel)

    previous = {}
    if threading.current_thread() is threading.main_thread():         # where a process's signals can be heard
        previous = {number: signal.signal(number, cancel) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except asyncio.CancelledError:
        if not signalled:
            raise
        task.uncancel()
        log.info("service.stopped", during="start-up", signal=signal.Signals(signalled[0]).name)
        raise StartFailed("stopped while starting", stopped=True) from None
    except Exception as exc:
        log.error("service.start_failed", error=str(exc) or type(exc).__name__)
        raise StartFailed(str(exc) or type(exc).__name__) from exc
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def create_service_app(
    name: str, settings: S, start: Starter[S, D], *, database: bool = True,
    route_handlers: Sequence[Any] = (), stop: Stopper[D] | None = None, health_handler: Any | None = None,
    metrics_guards: Sequence[Any] = (), **litestar_kwargs: Any,
) -> Litestar:
    """A Litestar app whose lifespan opens the Runtime, builds the service's Deps with `start` and closes both.

    Route handlers receive the Deps by declaring a `deps: NamedDependency[<their Deps>]` parameter;
    `app.state.runtime` holds the Runtime. `health_handler`, a route handler for GET /health, replaces the
    default liveness check; `metrics_guards` are Litestar guards on GET /metrics (none: anyone may scrape it).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        log = logs.configure(name, settings.log_level, settings.log_json)
        runtime: Runtime[S] | None = None
        deps: D | None = None
        try:
            async with starting(log):
                runtime = await open_runtime(name, settings, database=database)
                app.state.runtime = runtime
                deps = await start(runtime)
            app.state.deps = deps
            runtime.log.info("service.started", port=settings.port)
            yield
        finally:
            if runtime is not None:
                stopping = time.monotonic()
                if stop is not None and deps is not None:
                    with contextlib.suppress(Exception):
                        await stop(deps)
                await close_runtime(runtime)
                runtime.log.info("service.stopped", stop_s=round(time.monotonic() - stopping, 3))

    def liveness(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        checks = health_checks(request.app.state.runtime)
        ok = all(checks.values())
        return Response({"status": "ok" if ok else "error", "service": name, "checks": checks},
                        status_code=200 if ok else 503)

    health = get("/health", sync_to_thread=False)(liveness)
    # This process and its own connections only: what a container healthcheck or a liveness probe asks,
    # even where /health reports on more (the gateway's covers every endpoint and service).
    live = get("/health/live", sync_to_thread=False, name="liveness")(liveness)

    @get("/metrics", guards=list(metrics_guards))
    async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
        await refresh_before_scrape(request.app.state.runtime)
        return Response(generate_latest(request.app.state.runtime.registry), media_type=PROMETHEUS_MEDIA_TYPE)

    return Litestar(
        route_handlers=[health_handler or health, live, metrics, *route_handlers], lifespan=[lifespan],
        dependencies={"deps": Provide(_provide_deps, sync_to_thread=False)},
        logging_config=None, openapi_config=None, **litestar_kwargs,
    )


async def serve_subscriptions(
    runtime: Runtime[Any], subscriptions: dict[str, Callable[[D, bytes], Awaitable[bytes]]], deps: D,
    by_subject: dict[str, Callable[[D, bytes, str, str], Awaitable[bytes | None]]] | None = None,
    at_once: dict[str, int] | None = None, reply_rules: dict[str, Callable[[str, str], str | None]] | None = None,
    shares: dict[str, tuple[Callable[[str], str], int]] | None = None,
) -> object:
    """Expose a service's SUBSCRIPTIONS table over NATS request/reply, each handler given the service's Deps;
    `by_subject` handlers (wildcard subjects) are given the subject asked on and the reply subject too; `at_once`
    lets a subject's requests be handled that many at a time (`shares`: at most so many of one asker's), and
    `reply_rules` says on which reply subjects a subject's requests may be answered at all (`natsio.serve`)."""
    bound = {subject: functools.partial(handler, deps) for subject, handler in subscriptions.items()}
    routed = {subject: functools.partial(handler, deps) for subject, handler in (by_subject or {}).items()}
    return await natsio.serve(runtime.nc, runtime.name, bound, instance=runtime.settings.instance, by_subject=routed,
                              at_once=at_once, reply_rules=reply_rules, shares=shares)
