"""Routing that survives failure, through the gateway of `switchyard up --demo`, against simulators we control.

Each test gets a private lab: two in-process simulators registered as endpoints
`a` (priority 10) and `b` (priority 5) of a model only this lab's tenant uses.
Failures are injected on the chat route only, so the router's health probes of the
simulators keep answering and its breakers stay closed: these tests are about the
gateway's own retries and fallbacks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack
from tests.e2e.test_demo import exactly_one_usage_row

CHAT = ("/v1/chat/completions",)


@dataclass
class Lab:
    demo: DemoStack
    a: Simulator
    b: Simulator
    model: str
    fallback: str
    key: str
    ids: dict[str, str]

    async def chat(self, client: httpx.AsyncClient, stream: bool = False, model: str | None = None,
                   request_id: str | None = None) -> httpx.Response:
        body = {"model": model or self.model, "stream": stream,
                "messages": [{"role": "user", "content": "route me well"}]}
        headers = {"Authorization": f"Bearer {self.key}", "X-Request-Id": request_id or uuid.uuid4().hex}
        return await client.post(f"{self.demo.url}/v1/chat/completions", json=body, headers=headers)


async def admin(demo: DemoStack, method: str, path: str, body: dict | None = None) -> dict:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, f"{demo.url}/api/admin{path}", json=body,
                                         headers={"X-API-Key": demo.admin_key})
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
async def lab(demo: DemoStack):
    tag = uuid.uuid4().hex[:8]
    ids = {"provider": f"lab-{tag}", "a": f"a-{tag}", "b": f"b-{tag}", "tenant": f"t-{tag}"}
    model, fallback = f"labmodel-{tag}", f"labfallback-{tag}"
    async with Simulator(SimConfig(models=(model, fallback), tokens=4)) as a, \
            Simulator(SimConfig(models=(model, fallback), tokens=4)) as b:
        await admin(demo, "POST", "/providers", {"provider_id": ids["provider"], "kind": "openai-compatible"})
        await admin(demo, "POST", "/models", {"model_id": fallback})
        await admin(demo, "POST", "/models", {"model_id": model, "fallback_model": fallback})
        for name, sim, priority in (("a", a, 10), ("b", b, 5)):
            await admin(demo, "POST", "/endpoints", {
                "endpoint_id": ids[name], "provider_id": ids["provider"], "base_url": sim.url,
                "models": [model], "priority": priority, "timeout_s": 1.0})
        await admin(demo, "POST", "/tenants", {"tenant_id": ids["tenant"]})
        issued = await admin(demo, "POST", f"/tenants/{ids['tenant']}/keys", {"name": "lab"})
        try:
            yield Lab(demo, a, b, model, fallback, issued["key"], ids)
        finally:
            for name in ("a", "b"):
                await admin(demo, "DELETE", f"/endpoints/{ids[name]}")


async def test_fallback_when_first_endpoint_refuses_connection(lab: Lab) -> None:
    lab.a.configure(failure_kind="refuse", failure_rate=1.0)
    async with httpx.AsyncClient(timeout=10) as client:
        replies = await asyncio.gather(*(lab.chat(client) for _ in range(10)))
    assert [r.status_code for r in replies] == [200] * 10
    assert lab.b.stats.requests.get("/v1/chat/completions") == 10


async def test_retry_then_fallback_when_first_endpoint_answers_500(lab: Lab) -> None:
    lab.a.configure(failure_kind="http_500", failure_rate=1.0, failure_paths=CHAT)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await lab.chat(client, request_id=request_id)
    assert reply.status_code == 200
    assert lab.a.stats.failures.get("http_500") == 2, "one try and one retry on the first endpoint"
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["endpoint_id"] == lab.ids["b"] and event["attempts"] == 3 and event["outcome"] == "ok"


async def test_fallback_when_first_endpoint_hangs(lab: Lab) -> None:
    lab.a.configure(failure_kind="hang", failure_rate=1.0, failure_paths=CHAT)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await lab.chat(client)
    assert reply.status_code == 200
    assert time.monotonic() - started < 5, "the endpoint's 1 s read timeout moved the call on"


async def test_retry_after_is_honoured_before_retrying(lab: Lab) -> None:
    lab.a.configure(failure_kind="http_429", failure_rate=1.0, retry_after_s=1, failure_paths=CHAT)
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await lab.chat(client)
    assert reply.status_code == 200
    assert lab.a.stats.failures.get("http_429") == 2
    assert time.monotonic() - started >= 1.0


async def test_stream_cut_after_first_bytes_ends_with_an_error_event_and_partial_usage(lab: Lab) -> None:
    lab.a.configure(failure_kind="cut", failure_rate=1.0, token_interval_ms=5, failure_paths=CHAT)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await lab.chat(client, stream=True, request_id=request_id)
    assert reply.status_code == 200
    events = [line[6:] for line in reply.text.split("\n") if line.startswith("data: ")]
    assert json.loads(events[-1]) == {"error": {"message": json.loads(events[-1])["error"]["message"],
                                                "type": "upstream_error", "param": None, "code": "stream_cut"}}
    assert CHAT[0] not in lab.b.stats.requests, "no fallback once bytes reached the client"
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["outcome"] == "error" and event["output_tokens"] >= 1 and event["estimated"] is True


async def test_every_endpoint_down_gives_one_json_error_and_one_usage_event(lab: Lab) -> None:
    lab.a.configure(failure_kind="refuse", failure_rate=1.0)
    lab.b.configure(failure_kind="refuse", failure_rate=1.0)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await lab.chat(client, request_id=request_id)
    # the lab model's fallback model has no endpoint, so nothing is left to try
    assert reply.status_code == 502
    assert "did not answer" in reply.json()["error"]["message"]
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["outcome"] == "error" and event["input_tokens"] == 0 and event["output_tokens"] == 0


async def test_fallback_model_serves_when_the_model_cannot(lab: Lab) -> None:
    await admin(lab.demo, "POST", "/endpoints", {
        "endpoint_id": f"fb-{lab.ids['b']}", "provider_id": lab.ids["provider"], "base_url": lab.b.url,
        "models": [lab.fallback], "priority": 1})
    lab.a.configure(failure_kind="refuse", failure_rate=1.0)
    await admin(lab.demo, "DELETE", f"/endpoints/{lab.ids['b']}")
    request_id = uuid.uuid4().hex
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await lab.chat(client, request_id=request_id)
    finally:
        await admin(lab.demo, "POST", "/endpoints", {
            "endpoint_id": lab.ids["b"], "provider_id": lab.ids["provider"], "base_url": lab.b.url,
            "models": [lab.model], "priority": 5})
        await admin(lab.demo, "DELETE", f"/endpoints/fb-{lab.ids['b']}")
    assert reply.status_code == 200
    assert reply.headers["x-switchyard-model"] == lab.fallback
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["model"] == lab.fallback and event["requested_model"] == lab.model


async def test_concurrency_caps_hold_under_64_concurrent_calls(lab: Lab) -> None:
    for name, sim, priority in (("a", lab.a, 10), ("b", lab.b, 5)):
        await admin(lab.demo, "PUT", f"/endpoints/{lab.ids[name]}", {
            "provider_id": lab.ids["provider"], "base_url": sim.url, "models": [lab.model],
            "priority": priority, "max_concurrent": 2})
    lab.a.configure(latency_ms=50)
    lab.b.configure(latency_ms=50)
    peak = {"a": 0, "b": 0}
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            peak["a"] = max(peak["a"], lab.a.stats.busy)        # requests being answered, whichever worker
            peak["b"] = max(peak["b"], lab.b.stats.busy)        # of the gateway sent them
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        replies = await asyncio.gather(*(lab.chat(client) for _ in range(64)))
    elapsed = time.monotonic() - started
    done.set()
    await watcher
    assert [r.status_code for r in replies] == [200] * 64
    assert peak["a"] <= 3 and peak["b"] <= 3, peak      # the cap, plus the router's probe connection
    assert elapsed >= 64 / 4 * 0.05, "four slots of 50 ms calls cannot serve 64 calls faster"
    assert lab.a.stats.requests.get(CHAT[0], 0) + lab.b.stats.requests.get(CHAT[0], 0) == 64
