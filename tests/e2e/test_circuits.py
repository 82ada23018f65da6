"""Circuit breakers end to end: real calls through the gateway of `switchyard up --demo` to a simulator
that fails on command; the router folds the gateway's call outcomes, the gateway routes by what it publishes.

The demo's router runs the default policy: 5 consecutive failures open a breaker, 5 s of cool-down,
2 successful trials close it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, wait_for


@dataclass
class Rig:
    demo: DemoStack
    sim: Simulator
    endpoint: str
    model: str
    key: str

    async def admin(self, method: str, path: str, body: object = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(method, f"{self.demo.url}/api/admin{path}", json=body,
                                        headers={"X-API-Key": self.demo.admin_key})

    async def chat(self) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(f"{self.demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {self.key}"},
                                     json={"model": self.model, "messages": [{"role": "user", "content": "hi"}]})

    async def circuit(self) -> dict:
        listed = (await self.admin("GET", "/circuits")).json()
        return next(c for c in listed if c["endpoint_id"] == self.endpoint)

    async def state_is(self, *states: str) -> bool:
        return (await self.circuit())["state"] in states


@pytest.fixture
async def rig(demo: DemoStack) -> AsyncIterator[Rig]:
    tag = uuid.uuid4().hex[:8]
    model = f"cb-model-{tag}"
    async with Simulator(SimConfig(models=(model,), tokens=3)) as sim:
        rig = Rig(demo, sim, f"cb-{tag}", model, "")
        for path, body in (("/providers", {"provider_id": f"cbp-{tag}", "kind": "openai-compatible"}),
                           ("/models", {"model_id": model}),
                           ("/endpoints", {"endpoint_id": rig.endpoint, "provider_id": f"cbp-{tag}",
                                           "base_url": sim.url, "models": [model], "timeout_s": 2.0}),
                           ("/tenants", {"tenant_id": f"cbt-{tag}"})):
            assert (await rig.admin("POST", path, body)).status_code == 201
        rig.key = (await rig.admin("POST", f"/tenants/cbt-{tag}/keys", {"name": "cb"})).json()["key"]
        # The first probe of a new endpoint comes at once; wait for it so that no probe lands mid-test.
        await wait_for(lambda: sim.stats.requests.get("/v1/models"), 10, what="the router's first probe")
        try:
            yield rig
        finally:
            await rig.admin("DELETE", f"/endpoints/{rig.endpoint}")


async def test_breaker_opens_on_failed_calls_goes_half_open_and_closes_after_successes(rig: Rig) -> None:
    rig.sim.configure(failure_kind="http_500", failure_rate=1.0)
    for _ in range(3):                     # a try and a retry each: six failed attempts
        assert (await rig.chat()).status_code >= 500
    await wait_for(lambda: rig.state_is("open"), 10, what="breaker open")
    opened = await rig.circuit()
    assert opened["reason"] == "consecutive_failures" and opened["retry_at"]

    served = rig.sim.stats.requests.get("/v1/chat/completions", 0)
    refused = await rig.chat()
    assert refused.status_code == 503 and refused.headers.get("retry-after")
    assert rig.sim.stats.requests.get("/v1/chat/completions", 0) == served, "an open breaker sends nothing upstream"

    rig.sim.configure(failure_rate=0.0)
    await wait_for(lambda: rig.state_is("half_open", "closed"), 15, what="half-open after the cool-down")
    for _ in range(2):
        assert (await rig.chat()).status_code == 200
    await wait_for(lambda: rig.state_is("closed"), 10, what="closed after successful trials")
    status = (await rig.admin("GET", "/registry/status")).json()
    mine = next(e for e in status["endpoints"] if e["endpoint_id"] == rig.endpoint)
    assert mine["circuit"] == "closed"


async def test_reset_closes_an_open_breaker_at_once(rig: Rig) -> None:
    rig.sim.configure(failure_kind="refuse", failure_rate=1.0)
    for _ in range(5):
        await rig.chat()
        if await rig.state_is("open"):
            break
    await wait_for(lambda: rig.state_is("open"), 10, what="breaker open")
    rig.sim.configure(failure_rate=0.0)
    reset = await rig.admin("POST", f"/circuits/{rig.endpoint}/reset")
    assert reset.status_code == 200 and reset.json()["state"] == "closed" and reset.json()["previous"] == "open"
    assert (await rig.chat()).status_code == 200, "the gateway routes by the reset state at once"
    one = (await rig.admin("GET", f"/circuits/{rig.endpoint}")).json()
    assert (one["state"], one["reason"], one["consecutive_failures"]) == ("closed", "reset", 0)
    missing = await rig.admin("POST", "/circuits/no-such-endpoint/reset")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ENDPOINT_NOT_FOUND"
