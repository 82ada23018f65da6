"""The control plane on real servers: a NATS of its own, the real registry on a fresh database, routers
in-process with fast knobs, the gateway's Circuits, and simulators as endpoints.

Each test gets its own nats-server (the production stream and bucket names are
used, so the session's shared NATS, where the demo stack runs, stays untouched).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
import structlog

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_events, encode, encode_batch
from switchyard_gateway.contracts.events import CallAttempted
from switchyard_gateway.contracts.routing import CircuitChanged, ProbeCompleted
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.service import Runtime
from switchyard_gateway.services.registry.settings import Settings
from switchyard_gateway.kit.stack_nats import NatsServer
from switchyard_gateway.kit.stack_proc import Spawner, pick_free_port
from switchyard_gateway.simulator import SimConfig, Simulator
from switchyard_gateway.services.gateway.state.circuits import Circuits
from switchyard_gateway.services.registry import handlers as registry_handlers
from switchyard_gateway.services.router import handlers as router_handlers
from switchyard_gateway.services.router.control import RouterControl
from switchyard_gateway.services.router.policy import RouterPolicy
from tests.conftest import wait_for

FAST = RouterPolicy(probe_interval_s=60, probe_timeout_s=2, breaker_failures=3, breaker_cool_down_s=1.0,
                    breaker_successes=2, breaker_trial_calls=2, leader_ttl_s=1.5)


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    """A nats-server (JetStream) of this test's own."""
    first = pick_free_port(set())
    server = NatsServer(tmp_path, tmp_path, {"nats": first, "nats_monitor": pick_free_port({first})}, durable=False)
    spawner = Spawner()
    server.spawn(spawner)
    await asyncio.to_thread(server.wait_ready, timeout_s=20)
    yield server.url
    server.stop(timeout_s=5)
    spawner.close()


class Plane:
    """The registry, any number of routers and one gateway's Circuits on one private NATS."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url, self.pool = url, pool
        self.clients: list = []
        self.routers: list[RouterControl] = []
        self.circuits = Circuits()
        self.nc = None

    async def connect(self, name: str):
        nc = await natsio.connect(self.url, name, 10)
        self.clients.append(nc)
        return nc

    async def start(self) -> None:
        self.nc = await self.connect("plane")
        await natsio.ensure_streams(self.nc)
        runtime = Runtime(name="registry", settings=Settings(nats_url=self.url), log=structlog.get_logger(),
                          nc=await self.connect("registry"), pool=self.pool)
        self.store = (await registry_handlers.start(runtime)).store
        await self.circuits.start(self.nc, 10)

    async def router(self, instance: str, policy: RouterPolicy = FAST, *, leads: bool = True) -> RouterControl:
        control = RouterControl(await self.connect(instance), policy, instance,
                                leader_subscriptions=router_handlers.SUBSCRIPTIONS)
        await control.start(10)
        self.routers.append(control)
        if leads:
            await wait_for(lambda: control.serving, 5, what=f"{instance} leads and answers")
        return control

    async def command(self, command: m.Command) -> m.CommandReply:
        raw = await natsio.request(self.nc, subjects.REGISTRY_COMMAND, encode(command), 10)
        return msgspec.json.decode(raw, type=m.CommandReply)

    async def router_command(self, command: m.RouterCommand, timeout_s: float = 10) -> bytes:
        return await natsio.request(self.nc, subjects.ROUTER_COMMAND, encode(command), timeout_s)

    async def endpoint(self, sim: Simulator, kind: str = "ollama", models: tuple[str, ...] = ()) -> str:
        provider, endpoint = f"p-{uuid.uuid4().hex[:6]}", f"e-{uuid.uuid4().hex[:6]}"
        await self.command(m.RegisterProvider(provider_id=provider, kind=kind))  # type: ignore[arg-type]
        await self.command(m.RegisterEndpoint(endpoint_id=endpoint, provider_id=provider, base_url=sim.url,
                                              models=models))
        return endpoint

    async def outcomes(self, endpoint_id: str, *outcomes: str) -> None:
        """What a gateway publishes after its attempts: one batch on core NATS."""
        batch = [CallAttempted(request_id=uuid.uuid4().hex, endpoint_id=endpoint_id, model="m", outcome=o)
                 for o in outcomes]  # type: ignore[arg-type]
        await self.nc.publish(f"{subjects.CALL_ATTEMPTED}.gw-test", encode_batch(batch))

    async def stop(self) -> None:
        for control in self.routers:
            await control.stop()
        await self.circuits.stop()
        for nc in self.clients:
            if not nc.is_closed:
                await nc.close()


@pytest.fixture
async def plane(nats_url: str, pool: asyncpg.Pool) -> AsyncIterator[Plane]:
    running = Plane(nats_url, pool)
    await running.start()
    yield running
    await running.stop()


async def routing_events(plane: Plane, endpoint_id: str) -> list:
    """Every event the ROUTING stream holds for one endpoint, in order."""
    js = plane.nc.jetstream()
    sub = await js.subscribe(f"*.*.*.{endpoint_id}", stream=subjects.STREAM_ROUTING, ordered_consumer=True)
    found = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            found.extend(decode_events(msg.data))
    except Exception:  # noqa: BLE001 — the stream ran dry
        pass
    await sub.unsubscribe()
    return found


async def test_probes_discover_models_and_loaded_models(plane: Plane) -> None:
    async with Simulator(SimConfig(models=("llama3.2", "qwen2.5:7b"), loaded=("qwen2.5:7b",))) as sim:
        await plane.router("r1")
        endpoint = await plane.endpoint(sim)            # registered without models: it serves what it advertises
        catalog = plane.store.catalog
        await wait_for(lambda: catalog.endpoints[endpoint].models == ("llama3.2", "qwen2.5:7b"), 10,
                       what="discovered models recorded by the registry")
        assert {"llama3.2", "qwen2.5:7b"} <= set(catalog.models), "models it serves became routable"
        await wait_for(lambda: plane.circuits.loaded(endpoint) == {"qwen2.5:7b"}, 5, what="loaded models")
        health = plane.circuits.health(endpoint)
        assert health["ok"] and health["version"] and health["latency_ms"] > 0

        sim.configure(models=("llama3.2", "phi4"), loaded=("llama3.2",))
        reply = msgspec.json.decode(await plane.router_command(m.RefreshProbes()), type=m.RefreshReply)
        assert [p.loaded for p in reply.probes] == [("llama3.2",)] and len(reply.registry_event_ids) == 2
        facts = {f.model: f for f in reply.probes[0].facts}            # the simulator's own /api/show, per model
        assert set(facts) == {"llama3.2", "phi4"} and facts["phi4"].capabilities == ("completion", "tools")
        await wait_for(lambda: plane.circuits.loaded(endpoint) == {"llama3.2"}, 5, what="loaded models updated")
        assert catalog.endpoints[endpoint].models == ("llama3.2", "phi4") and "phi4" in catalog.models
        again = msgspec.json.decode(await plane.router_command(m.RefreshProbes()), type=m.RefreshReply)
        assert again.registry_event_ids == [], "an unchanged model set records nothing"
    async with plane.pool.acquire() as conn:
        recorded = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'endpoint.models_discovered.v1'")
    assert recorded == 2


async def test_breaker_opens_on_call_outcomes_goes_half_open_and_closes_after_successes(plane: Plane) -> None:
    async with Simulator(SimConfig(models=("m1",))) as sim:
        await plane.router("r1")
        endpoint = await plane.endpoint(sim, "openai-compatible", ("m1",))
        await wait_for(lambda: plane.circuits.health(endpoint), 5, what="the first probe")
        # failures of calls to a server that is up (its probes answer): the next probe (or the cool-down) lets
        # trial calls through, and only calls that succeed close it (test_router_breaker.py)
        await plane.outcomes(endpoint, "cut", "http_5xx")
        await plane.outcomes(endpoint, "timeout")
        await wait_for(lambda: plane.circuits.state(endpoint) == "open", 5, what="breaker open")

        await wait_for(lambda: plane.circuits.state(endpoint) == "half_open", 5, what="half-open")
        assert [plane.circuits.allows(endpoint) for _ in range(3)] == [True, True, False], "two trials at a time"
        plane.circuits.release(endpoint)
        assert plane.circuits.allows(endpoint)

        async def trial_successes() -> int:
            raw = await natsio.request(plane.nc, subjects.ROUTER_QUERY, encode(m.RouterQuery(endpoint_id=endpoint)), 5)
            return msgspec.json.decode(raw, type=m.CircuitView).trial_successes
        await plane.outcomes(endpoint, "ok")
        await wait_for(trial_successes, 5, what="the first trial call counted")
        await plane.outcomes(endpoint, "ok")
        await wait_for(lambda: plane.circuits.state(endpoint) == "closed", 5, what="closed after two successes")
    changes = [(c.previous, c.state, c.reason) for c in await routing_events(plane, endpoint)
               if isinstance(c, CircuitChanged)]
    assert changes[0] == ("closed", "open", "consecutive_failures") and changes[-1] == ("half_open", "closed",
                                                                                      "trials_succeeded")
    assert changes[1] in (("open", "half_open", "probe_succeeded"), ("open", "half_open", "cool_down"))


async def test_failing_probes_open_the_breaker_and_reset_closes_it(plane: Plane) -> None:
    async with Simulator(SimConfig(models=("m1",))) as sim:
        await plane.router("r1", msgspec.structs.replace(FAST, breaker_cool_down_s=30))
        endpoint = await plane.endpoint(sim, "openai-compatible", ("m1",))
        await wait_for(lambda: plane.circuits.health(endpoint), 5, what="the first probe")
        sim.configure(failure_kind="http_500", failure_rate=1.0)
        for _ in range(3):
            await plane.router_command(m.RefreshProbes(endpoint_ids=(endpoint,)))
        await wait_for(lambda: plane.circuits.state(endpoint) == "open", 5, what="breaker opened by probes")
        assert "HTTP 500" in plane.circuits.health(endpoint)["error"]
        changed = msgspec.json.decode(await plane.router_command(m.ResetCircuit(endpoint_id=endpoint)),
                                      type=CircuitChanged)
        assert (changed.previous, changed.state, changed.reason) == ("open", "closed", "reset")
        await wait_for(lambda: plane.circuits.state(endpoint) == "closed", 5, what="closed by reset")


async def test_endpoint_test_reports_a_refused_connection_and_a_live_latency(plane: Plane) -> None:
    await plane.router("r1")
    async with Simulator(SimConfig(models=("m1",))) as sim:
        live = msgspec.json.decode(await plane.router_command(
            m.TestEndpoint(endpoint_id="x", kind="openai-compatible", base_url=sim.url)), type=ProbeCompleted)
        dead_url = sim.url
    dead = msgspec.json.decode(await plane.router_command(
        m.TestEndpoint(endpoint_id="x", kind="ollama", base_url=dead_url)), type=ProbeCompleted)
    assert live.ok and live.latency_ms > 0 and live.models == ("m1",) and not live.error
    assert not dead.ok and "connection refused" in dead.error


async def test_a_leader_that_dies_is_replaced_once_its_lease_expires_and_never_two_lead(plane: Plane) -> None:
    first = await plane.router("r1")
    second = await plane.router("r2", leads=False)
    both = []

    async def watch() -> None:
        while True:
            both.append(first.lease.held and second.lease.held)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(1.0)
    assert not second.lease.held, "r2 follows while r1 renews"
    for task in first.tasks:        # r1 dies without letting go: no renewals, no release
        task.cancel()
    await wait_for(lambda: second.lease.held, 5, what="r2 takes over after the lease expired")
    assert await second.lease.current() == "r2"
    watcher.cancel()
    assert not any(both), "there was a moment with two leaders"


async def test_probes_send_the_credential_and_never_repeat_it(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream that echoes a wrong key (as OpenAI's 401 does) must not get the secret into a report."""
    from aiohttp import web

    secret = f"sk-probe-{uuid.uuid4().hex}"
    monkeypatch.setenv("SY_TEST_PROBE_KEY", secret)
    presented: list[str] = []

    async def models(request: web.Request) -> web.Response:
        presented.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": {"message": f"Incorrect API key provided: {presented[-1][7:]}"}},
                                 status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 — aiohttp keeps the bound port here
    try:
        await plane.router("r1")
        result = msgspec.json.decode(await plane.router_command(m.TestEndpoint(
            endpoint_id="x", kind="openai", base_url=f"http://127.0.0.1:{port}/v1",
            api_key_ref="${SY_TEST_PROBE_KEY}")), type=ProbeCompleted)
    finally:
        await runner.cleanup()
    assert presented == [f"Bearer {secret}"]
    assert not result.ok and result.status == 401 and "Incorrect API key provided: ***" in result.error
    assert secret not in result.error
