"""End to end: the gateway's workers share its port, each with its own event-fed state, and agree on a registry
change within a second."""

from __future__ import annotations

import time
import uuid

import httpx

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack

AGREE_WITHIN_S = 1.0          # no worker refuses a model added to the registry later than this after the admin reply
POLL_DEADLINE_S = 15.0        # how long the test looks for every worker before it gives up


async def admin(demo: DemoStack, method: str, path: str, body: object = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{demo.url}{path}", json=body, headers={"X-API-Key": demo.admin_key})


async def probe(demo: DemoStack, model: str) -> tuple[str, int]:
    """On one new connection: which worker answers it (its /health), and the status of a chat call to `model`."""
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1)) as client:
        health = await client.get(f"{demo.url}/health", headers={"X-API-Key": demo.admin_key})
        instance = health.json()["gateway"]["instance"]
        call = await client.post(f"{demo.url}/v1/chat/completions",
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                                 headers={"Authorization": f"Bearer {demo.demo_key}"})
        again = (await client.get(f"{demo.url}/health", headers={"X-API-Key": demo.admin_key})).json()
        assert again["gateway"]["instance"] == instance, "one connection, one worker"
        return instance, call.status_code


async def test_every_worker_routes_a_model_within_a_second_of_its_registration(demo: DemoStack) -> None:
    tag = uuid.uuid4().hex[:8]
    model = f"m-{tag}"
    async with Simulator(SimConfig(models=(model,))) as sim:
        created = await admin(demo, "POST", "/api/admin/endpoints", {
            "endpoint_id": f"e-{tag}", "provider_id": "openai-sim", "base_url": sim.url, "models": [model]})
        assert created.status_code == 201, created.text
        try:
            members = (await admin(demo, "GET", "/health")).json()["services"]["gateway"]["members"]
            assert len(members) >= 2, f"the demo's gateway runs several workers: {members}"
            seen: dict[str, int] = {}
            while set(seen) != set(members):            # before: every worker refuses the unknown model itself
                instance, status = await probe(demo, model)
                seen[instance] = status
            assert set(seen.values()) == {404}, seen

            registered = await admin(demo, "POST", "/api/admin/models", {"model_id": model, "kind": "chat"})
            assert registered.status_code == 201, registered.text
            changed_at = time.monotonic()
            routed: dict[str, float] = {}
            refused: dict[str, float] = {}   # per worker, the last refusal seen (the kernel picks who gets a connection)
            while set(routed) != set(members) and time.monotonic() - changed_at < POLL_DEADLINE_S:
                instance, status = await probe(demo, model)
                if status == 200:
                    routed.setdefault(instance, time.monotonic() - changed_at)
                else:
                    assert status == 404 and instance not in routed, (instance, status, routed)
                    refused[instance] = time.monotonic() - changed_at
            assert set(routed) == set(members), f"workers that never routed {model}: {set(members) - set(routed)}"
            assert max(refused.values(), default=0.0) <= AGREE_WITHIN_S, (refused, routed)
        finally:
            await admin(demo, "DELETE", f"/api/admin/endpoints/e-{tag}")
            await admin(demo, "DELETE", f"/api/admin/models/{model}")
