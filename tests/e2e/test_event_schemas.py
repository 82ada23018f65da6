"""End to end: every event the running system writes is valid against its published schema.

A mixed workload goes through the gateway of `switchyard up --demo` — chat, a stream, embeddings, an admin
change from a new tenant to its removal, a limits change and calls that fail until a breaker opens — and then
every event of the demo's log, every routing event on the ROUTING stream and every call outcome heard on
`call.attempted.v1.>` is validated against the JSON Schema of its `type`, formats included.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import httpx
import jsonschema
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from switchyard_gateway.contracts import schemas, subjects
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, wait_for

VALIDATORS = {name: jsonschema.Draft202012Validator(schemas.json_schema(name),
                                                    format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
              for name in schemas.CONTRACTS}
EVENT_TYPES = set(schemas.event_names())
WORKLOAD_TYPES = {  # what the workload below must have made the system write, at least
    "usage.recorded.v2", "call.attempted.v1", "provider.registered.v1", "provider.removed.v1",
    "endpoint.registered.v1", "endpoint.removed.v1", "model.registered.v1", "model.removed.v1",
    "tenant.created.v1", "tenant.removed.v1", "tenant.model_assigned.v1", "tenant.model_unassigned.v1",
    "key.issued.v1", "key.revoked.v1", "limits.set.v1", "probe.completed.v1", "circuit.changed.v1",
}


def problems(payloads: list[dict]) -> list[str]:
    """Each payload that its type's schema refuses, with why."""
    found = []
    for payload in payloads:
        kind = payload.get("type")
        if kind not in EVENT_TYPES:
            found.append(f"unknown type {kind!r}: {payload}")
            continue
        found += [f"{kind} {payload.get('event_id')}: {error.json_path}: {error.message}"
                  for error in VALIDATORS[kind].iter_errors(payload)]
    return found


class Workload:
    def __init__(self, demo: DemoStack, sim: Simulator, tag: str) -> None:
        self.demo, self.sim, self.tag = demo, sim, tag
        self.client = httpx.AsyncClient(base_url=demo.url, timeout=30)

    async def admin(self, method: str, path: str, body: object = None) -> dict:
        response = await self.client.request(method, f"/api/admin{path}", json=body,
                                             headers={"X-API-Key": self.demo.admin_key})
        assert response.status_code in (200, 201), (path, response.text)
        return response.json()

    async def call(self, path: str, body: dict, key: str | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers={"Authorization": f"Bearer {key or self.demo.demo_key}"})


@pytest.fixture
async def following(urls: StackUrls):
    """Call outcomes as the router hears them, collected while the test runs."""
    nc = await natsio.connect(urls.nats_url, "schema-test", 10)
    heard: list[dict] = []

    async def on_message(msg) -> None:
        body = json.loads(msg.data)
        heard.extend(body if isinstance(body, list) else [body])

    await nc.subscribe(f"{subjects.CALL_ATTEMPTED}.>", cb=on_message)
    try:
        yield nc, heard
    finally:
        await nc.close()


async def routing_events(nc) -> list[dict]:
    """Every message the ROUTING stream holds, each event of it."""
    js = nc.jetstream(timeout=10)
    info = await js.stream_info(subjects.STREAM_ROUTING)
    found: list[dict] = []
    if info.state.messages == 0:
        return found
    sub = await js.subscribe(">", stream=subjects.STREAM_ROUTING, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            body = json.loads(msg.data)
            found.extend(body if isinstance(body, list) else [body])
            if msg.metadata.sequence.stream >= info.state.last_seq:
                return found
    finally:
        await sub.unsubscribe()


async def log_events(demo: DemoStack) -> list[dict]:
    conn = await asyncpg.connect(demo.database_url)
    try:
        rows = await conn.fetch("SELECT type, payload::text AS payload FROM events ORDER BY position")
    finally:
        await conn.close()
    payloads = [json.loads(row["payload"]) for row in rows]
    assert all(p["type"] == row["type"] for p, row in zip(payloads, rows)), "a payload whose type is not its row's"
    return payloads


async def test_every_event_of_a_mixed_workload_is_valid_against_its_schema(demo: DemoStack, following) -> None:
    nc, heard = following
    tag = uuid.uuid4().hex[:8]
    tenant, model, endpoint = f"sch-{tag}", f"sch-model-{tag}", f"sch-ep-{tag}"
    async with Simulator(SimConfig(models=(model,), tokens=4)) as sim:
        work = Workload(demo, sim, tag)
        try:
            # chat, a stream and embeddings through the demo tenant
            chat = await work.call("/v1/chat/completions", {"model": "llama3.2",
                                                            "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 200, chat.text
            streamed = await work.call("/v1/chat/completions", {"model": "llama3.2", "stream": True,
                                                                "messages": [{"role": "user", "content": "hi"}]})
            assert streamed.status_code == 200 and "[DONE]" in streamed.text
            embedded = await work.call("/v1/embeddings", {"model": "nomic-embed-text", "input": ["a", "b"]})
            assert embedded.status_code == 200, embedded.text

            # an admin change: a tenant with its own provider, model, endpoint, assignment and keys
            await work.admin("POST", "/providers", {"provider_id": f"sch-p-{tag}", "kind": "openai-compatible"})
            await work.admin("POST", "/models", {"model_id": model, "input_price_per_1m": 1.0,
                                                 "output_price_per_1m": 2.0})
            await work.admin("POST", "/endpoints", {"endpoint_id": endpoint, "provider_id": f"sch-p-{tag}",
                                                    "base_url": sim.url, "models": [model], "timeout_s": 2.0})
            await work.admin("POST", "/tenants", {"tenant_id": tenant, "all_models": False})
            await work.admin("POST", f"/tenants/{tenant}/models", {"model_id": model, "is_default": True})
            key = (await work.admin("POST", f"/tenants/{tenant}/keys",
                                    {"name": "schemas", "expires_at": "2099-01-01T00:00:00"}))["key"]
            spare = (await work.admin("POST", f"/tenants/{tenant}/keys", {"name": "spare"}))["key_id"]
            await work.admin("DELETE", f"/keys/{spare}")

            # a limits change, then calls on the new tenant: served, then failing until the breaker opens
            await work.admin("PUT", f"/tenants/{tenant}/limits", {"daily_tokens": 100_000, "rpm": 600})
            await wait_for(lambda: sim.stats.requests.get("/v1/models"), 15, what="the router's first probe")
            served = await work.call("/v1/chat/completions",
                                     {"model": model, "messages": [{"role": "user", "content": "hi"}]}, key)
            assert served.status_code == 200, served.text
            sim.configure(failure_kind="http_500", failure_rate=1.0)
            for _ in range(3):
                failed = await work.call("/v1/chat/completions",
                                         {"model": model, "messages": [{"role": "user", "content": "hi"}]}, key)
                assert failed.status_code >= 500
            await wait_for(lambda: _opened(work, endpoint), 15, what="the breaker to open")
        finally:
            for path in (f"/tenants/{tenant}/models/{model}", f"/endpoints/{endpoint}", f"/tenants/{tenant}",
                         f"/models/{model}", f"/providers/sch-p-{tag}"):
                await work.client.delete(f"/api/admin{path}", headers={"X-API-Key": demo.admin_key})
            await work.client.aclose()

    async def logged() -> list[dict] | None:
        events = await log_events(demo)
        mine = [e for e in events if e.get("tenant_id") == tenant and e["type"] == "usage.recorded.v2"]
        removed = any(e["type"] == "provider.removed.v1" and e["provider_id"] == f"sch-p-{tag}" for e in events)
        return events if len(mine) == 4 and removed else None

    events = await wait_for(logged, 20, what="the workload's events in the log")
    events += await routing_events(nc)
    await wait_for(lambda: any(e["endpoint_id"] == endpoint for e in heard), 5,
                   what="the call outcomes of the new endpoint")
    events += heard

    assert problems(events) == []
    assert WORKLOAD_TYPES <= {e["type"] for e in events}, WORKLOAD_TYPES - {e["type"] for e in events}
    issued = next(e for e in events if e["type"] == "key.issued.v1" and e["tenant_id"] == tenant
                  and e["name"] == "schemas")
    assert issued["expires_at"] == "2099-01-01T00:00:00Z"          # recorded with its offset


async def _opened(work: Workload, endpoint: str) -> bool:
    response = await work.client.get(f"/api/admin/circuits/{endpoint}", headers={"X-API-Key": work.demo.admin_key})
    return response.status_code == 200 and response.json()["state"] == "open"


async def test_metering_replies_relayed_by_the_gateway_match_their_schema(demo: DemoStack) -> None:
    headers = {"Authorization": f"Bearer {demo.admin_key}"}
    reply = VALIDATORS["metering.query.v1.reply"]
    async with httpx.AsyncClient(base_url=demo.url, timeout=30) as client:
        counts = await client.get("/api/token_counts", headers=headers)
        stats = await client.post("/api/stats", json={"model": "llama3.2"}, headers=headers)
        rollup = await client.post("/api/aggregate_time_series_days", json={"days": 400}, headers=headers)
    for response in (counts, stats):
        assert response.status_code == 200, response.text
        reply.validate(response.json())
    assert rollup.status_code == 200, rollup.text
    VALIDATORS["metering.command.v1.reply"].validate(rollup.json())
    with pytest.raises(jsonschema.ValidationError):
        reply.validate({**msgspec.json.decode(counts.content), "total_tokens": "many"})
