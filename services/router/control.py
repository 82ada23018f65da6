"""The router's control loop: follow the registry, hold or chase the lease, and while leading probe every
endpoint (every `probe_interval_s`, or `probe_open_interval_s` while its breaker is not closed), fold call
outcomes into breakers, publish what changed and answer commands.

Every replica follows `REGISTRY` (what to probe) and `ROUTING` (the breaker states
last published) and hears every gateway's call outcomes; only the lease holder
acts on them. So one replica probes at a time, breaker counters live in one
place, and a new leader resumes from the published states.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from switchyard_gateway.catalog.health import HealthView
from switchyard_gateway.catalog.rules import model_name_problem
from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.events import CallAttempted, EndpointRegistered, Event, now, subject_of
from switchyard_gateway.contracts.messages import CommandReply, RecordDiscoveredModels
from switchyard_gateway.contracts.routing import ProbeCompleted
from switchyard_gateway.events import StreamFold
from switchyard_gateway.kit import natsio
from switchyard_gateway.services.router.board import Board
from switchyard_gateway.services.router.facts import FactsBook
from switchyard_gateway.services.router.lease import Lease
from switchyard_gateway.services.router.policy import RouterPolicy
from switchyard_gateway.services.router import probes
from switchyard_gateway.services.router.probes import probe
from switchyard_gateway.services.router.warmup import Warmer

log = structlog.get_logger()
_outcomes = decoder(list[CallAttempted])
_reply = msgspec.json.Decoder(CommandReply)
Handler = Callable[["RouterControl", bytes], Awaitable[bytes]]
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
TICK_S = 0.2


class RouterControl:
    def __init__(self, nc: NATS, policy: RouterPolicy, instance: str, *, leader_subscriptions: dict[str, Handler],
                 leader_at_once: dict[str, int] | None = None, request_timeout_s: float = 5.0,
                 replicas: int = 1) -> None:
        self.nc, self.policy, self.instance = nc, policy, instance
        self.request_timeout_s = request_timeout_s
        self.catalog = Catalog()
        self.health = HealthView()
        self.registry = StreamFold(subjects.STREAM_REGISTRY, self._on_registry_event)
        self.routing = StreamFold(subjects.STREAM_ROUTING, self.health.apply, last_per_subject=True)
        self.board = Board(policy, instance)
        self.facts = FactsBook()                  # what servers say of their models, kept between probes
        self.lease = Lease(nc, instance, policy.leader_ttl_s, replicas)
        self.client = probes.client(policy.probe_concurrency)
        self.leader_subscriptions = leader_subscriptions
        self.leader_at_once = leader_at_once or {}       # subjects served that many requests at once (natsio.serve)
        self.warmer = Warmer(nc, self.client, self.catalog, instance, keep_alive=policy.warm_keep_alive,
                             timeout_s=policy.warm_timeout_s, request_timeout_s=request_timeout_s)
        self.next_probe: dict[str, float] = {}       # endpoint -> monotonic time of its next probe
        self.last_ok: dict[str, bool] = {}           # endpoint -> whether its last probe (as leader) was ok
        self._warming: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._service: Any = None               # the leader's request/reply service
        self._presence: Any = None              # every replica answers $SRV.PING (the gateway's /health counts them)
        self._sub: Any = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout_s: float = 30.0, spawn: Spawn | None = None) -> None:
        """Catch up with both streams, then run the lease, probe and clock loops (through `spawn`, so a
        service can end the process when one dies)."""
        await self.registry.start(self.nc, timeout_s)
        await self.routing.start(self.nc, timeout_s)
        await self.lease.open()
        self._presence = await natsio.serve(self.nc, "router", {}, instance=self.instance)
        # No queue group: every replica hears every outcome, only the leader folds them.
        self._sub = await self.nc.subscribe(f"{subjects.CALL_ATTEMPTED}.>", cb=self._on_outcomes)
        for coro, name in ((self.lease.run(self._gained, self._lost), "router-lease"),
                           (self._probe_loop(), "router-probes"), (self._tick_loop(), "router-ticks")):
            self._tasks.append(spawn(coro, name) if spawn is not None else asyncio.create_task(coro, name=name))

    @property
    def serving(self) -> bool:
        """Whether this replica leads and answers router commands and queries."""
        return self._service is not None and self.lease.held

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """The lease, probe and clock loops."""
        return self._tasks

    async def stop(self) -> None:
        """Stop acting, give the lease up at once (a successor need not wait for it to expire)."""
        for task in [*self._tasks, *self._warming]:
            task.cancel()
        for task in [*self._tasks, *self._warming]:
            with contextlib.suppress(BaseException):
                await task
        if self.lease.hook is not None:         # a gain or loss half done finishes first (see Lease)
            with contextlib.suppress(Exception):
                await self.lease.hook
        await self._stop_service()
        await self.lease.release()
        if self._presence is not None:
            with contextlib.suppress(Exception):
                await self._presence.stop()
        for closing in (self.registry.stop(), self.routing.stop(), self.client.close()):
            with contextlib.suppress(Exception):
                await closing
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _gained(self) -> None:
        self.board.resume({e: c for e, c in self.health.circuits.items() if e in self.catalog.endpoints})
        self.next_probe.clear()                      # probe everything at once
        self.last_ok.clear()                         # endpoints marked warm_on_start are warmed afresh
        self._service = await natsio.serve(self.nc, "router", {
            subject: functools.partial(handler, self) for subject, handler in self.leader_subscriptions.items()},
            instance=self.instance, role="leader", at_once=self.leader_at_once)
        self._wake.set()

    async def _lost(self) -> None:
        await self._stop_service()
        self.board.breakers.clear()

    async def _stop_service(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            with contextlib.suppress(Exception):
                await service.stop()

    def _on_registry_event(self, event: Event) -> None:
        """Fold the registry in; a new or changed endpoint is probed at once."""
        self.catalog.apply(event)
        if isinstance(event, EndpointRegistered):
            self.next_probe.pop(event.endpoint_id, None)
            self.last_ok.pop(event.endpoint_id, None)
            self._wake.set()

    # --- call outcomes and the clock -------------------------------------------------------------

    async def _on_outcomes(self, msg: Msg) -> None:
        if not self.lease.held:
            return
        try:
            attempts = _outcomes.decode(msg.data)
        except msgspec.MsgspecError:
            log.warning("router.bad_outcomes", subject=msg.subject)
            return
        for change in self.board.fold_outcomes(attempts, self.catalog.endpoints, now()):
            await self.publish(change)
            if change.state == "open":               # probe it on the short schedule from now on
                self._probe_soon(change.endpoint_id, self.policy.probe_open_interval_s)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if not self.lease.held:
                continue
            for change in self.board.tick(now()):
                await self.publish(change)
                self._probe_soon(change.endpoint_id, 0.0)       # half-open: a trial probe now

    def _probe_soon(self, endpoint_id: str, delay_s: float) -> None:
        """Probe an endpoint within `delay_s` (sooner if it was due sooner)."""
        at = time.monotonic() + delay_s
        self.next_probe[endpoint_id] = min(self.next_probe.get(endpoint_id, at), at)
        self._wake.set()

    async def publish(self, event: Event) -> None:
        """Publish a routing event to JetStream (de-duplicated by its id); a failure is logged, not raised."""
        try:
            await self.nc.jetstream(timeout=5).publish(
                subject_of(event), encode(event), headers={subjects.MSG_ID_HEADER: str(event.event_id)})
        except Exception as exc:  # noqa: BLE001 — health signals must not stop the loops
            log.warning("router.publish_failed", subject=subject_of(event), error=str(exc) or type(exc).__name__)
            return
        if getattr(event, "state", None) is not None:
            log.info("router.circuit_changed", endpoint=event.endpoint_id,  # type: ignore[attr-defined]
                     state=event.state, previous=event.previous, reason=event.reason)  # type: ignore[attr-defined]

    # --- probes ----------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, self.policy.probe_open_interval_s))
            self._wake.clear()
            if not self.lease.held:
                continue
            clock = time.monotonic()
            due = [e for e in self.catalog.endpoints if self.next_probe.get(e, 0.0) <= clock]
            if due:
                await self.probe_round(due)

    async def probe_round(self, endpoint_ids: list[str]) -> tuple[list[ProbeCompleted], list[str]]:
        """Probe endpoints (bounded concurrency), publish results and transitions, record discoveries."""
        self.board.forget(self.catalog.endpoints)
        self.facts.forget(self.catalog.endpoints)
        gate = asyncio.Semaphore(self.policy.probe_concurrency)

        async def one(endpoint_id: str) -> tuple[ProbeCompleted, list[str]] | None:
            async with gate:
                return await self._probe_one(endpoint_id)

        done = [r for r in await asyncio.gather(*(one(e) for e in endpoint_ids)) if r is not None]
        return [p for p, _ in done], [i for _, ids in done for i in ids]

    async def _probe_one(self, endpoint_id: str) -> tuple[ProbeCompleted, list[str]] | None:
        endpoint = self.catalog.endpoints.get(endpoint_id)
        provider = self.catalog.providers.get(endpoint.provider_id) if endpoint else None
        if endpoint is None or provider is None:
            return None
        self.next_probe[endpoint_id] = time.monotonic() + self.policy.probe_interval_s
        result = await probe(self.client, endpoint_id, provider.kind, endpoint.base_url, endpoint.api_key_ref,
                             self.policy.probe_timeout_s, self.instance, self.facts)
        if not self.lease.held:
            return None                              # lost the lease meanwhile: the new leader probes
        await self.publish(result)
        if not result.ok:
            log.info("router.probe_failed", endpoint=endpoint_id, error=result.error)
        elif endpoint.warm_on_start and not self.last_ok.get(endpoint_id):
            self._warm_soon(endpoint_id, endpoint.models or result.models)
        self.last_ok[endpoint_id] = result.ok
        change = self.board.fold_probe(result, now())
        if change is not None:
            await self.publish(change)
        if self.board.state(endpoint_id) != "closed":   # open or trying: look again soon
            self.next_probe[endpoint_id] = time.monotonic() + self.policy.probe_open_interval_s
        return result, await self._discover(result)

    def _warm_soon(self, endpoint_id: str, models: tuple[str, ...]) -> None:
        """Warm an endpoint marked `warm_on_start` now that it probed healthy (after none, or a failure)."""
        task = asyncio.create_task(self.warmer.warm_endpoint(endpoint_id, models), name=f"warm-{endpoint_id}")
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _discover(self, result: ProbeCompleted) -> list[str]:
        """Tell the registry when an endpoint advertises a different set of models; the events it recorded."""
        models = tuple(sorted(n for n in result.models if not model_name_problem(n)))
        if not result.ok or self.catalog.discovered.get(result.endpoint_id) == models:
            return []
        refused = [model_name_problem(n) for n in result.models if model_name_problem(n)]
        if refused:
            log.warning("router.model_names_refused", endpoint=result.endpoint_id, problems=refused[:10])
        command = RecordDiscoveredModels(endpoint_id=result.endpoint_id, models=models)
        try:
            raw = await natsio.request(self.nc, subjects.REGISTRY_COMMAND, encode(command), self.request_timeout_s)
        except natsio.ServiceError as exc:
            log.warning("router.discovery_not_recorded", endpoint=result.endpoint_id, error=exc.body.message)
            return []
        reply = _reply.decode(raw)
        if reply.events:
            log.info("router.models_discovered", endpoint=result.endpoint_id, models=list(models))
        return [str(e.event_id) for e in reply.events]
