"""Hostile callers, hung upstreams and clients that leave, through the gateways of `switchyard up --demo`.

Each test gets a private lab: two in-process simulators registered as endpoints `a` (priority 10) and
`b` (priority 5) of a model only the lab's tenants use (context length 8192), each with a first-byte
timeout of 1 s. A second gateway process runs beside the demo's on the same NATS and Valkey, with JWTs on.
"""

from __future__ import annotations

import asyncio
import json
import base64
import time
import urllib.error
import urllib.request
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import msgspec
import pytest
import redis.asyncio as redis
import requests

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.e2e.test_quota_e2e import PREFIX, Gateway, settled, start_gateway, stop_gateway
from tests.raw_upstream import RawUpstream

JWT_SECRET = "hostile-e2e-jwt-secret-with-32-bytes!"
CHAT = ("/v1/chat/completions", "/api/chat", "/v1/completions", "/api/generate")
CONTEXT = 8192
FIRST_BYTE_S = 1.0
UNSET_CREDENTIAL = "HOSTILE_TEST_UPSTREAM_KEY_NEVER_SET"     # not SWITCHYARD_*: those are refused
ESTIMATOR = TokenEstimator()


@pytest.fixture(scope="module")
def second_gateway(demo: DemoStack, urls) -> Iterator[Gateway]:
    gateway = start_gateway(demo, urls, jwt_secret=JWT_SECRET)
    yield gateway
    stop_gateway(gateway)


@dataclass
class Lab:
    demo: DemoStack
    a: Simulator
    b: Simulator
    model: str
    tag: str
    member: str                       # a member key of the lab's tenant
    tenant: str
    ids: dict[str, str] = field(default_factory=dict)

    def headers(self, key: str | None = None, request_id: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.member}", "X-Request-Id": request_id or uuid.uuid4().hex}

    def body(self, path: str = "/v1/chat/completions", **fields: Any) -> dict[str, Any]:
        if path in ("/v1/chat/completions", "/api/chat"):
            base = {"messages": [{"role": "user", "content": "route me well through the yard"}]}
        elif path in ("/v1/embeddings", "/api/embed"):
            base = {"input": "route me well"}
        else:
            base = {"prompt": "route me well through the yard"}
        if path.startswith("/api/"):
            base["stream"] = False
        return {"model": self.model, **base, **fields}

    async def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(method, f"{self.demo.url}/api/admin{path}", json=body,
                                        headers={"X-API-Key": self.demo.admin_key})

    async def tenant_with(self, **limits: Any) -> tuple[str, str]:
        """Another tenant of the lab with a member key and these limits."""
        tenant = f"h-{uuid.uuid4().hex[:10]}"
        assert (await self.admin("POST", "/tenants", {"tenant_id": tenant})).status_code == 201
        key = (await self.admin("POST", f"/tenants/{tenant}/keys", {"name": "hostile"})).json()["key"]
        if limits:
            assert (await self.admin("PUT", f"/tenants/{tenant}/limits", limits)).status_code == 200
        return tenant, key

    async def circuit(self, name: str) -> str:
        listed = (await self.admin("GET", "/circuits")).json()
        return next((c["state"] for c in listed if c["endpoint_id"] == self.ids[name]), "closed")


@pytest.fixture
async def lab(demo: DemoStack) -> AsyncIterator[Lab]:
    tag = uuid.uuid4().hex[:8]
    model = f"hostile-{tag}"
    ids = {"provider": f"hp-{tag}", "a": f"ha-{tag}", "b": f"hb-{tag}"}
    async with Simulator(SimConfig(models=(model, f"{model}-embed"), tokens=1000)) as a, \
            Simulator(SimConfig(models=(model, f"{model}-embed"), tokens=1000)) as b:
        probe = Lab(demo, a, b, model, tag, "", "", ids)
        assert (await probe.admin("POST", "/providers", {"provider_id": ids["provider"],
                                                         "kind": "openai-compatible"})).status_code == 201
        assert (await probe.admin("POST", "/models", {"model_id": model, "context_length": CONTEXT})).status_code == 201
        assert (await probe.admin("POST", "/models", {"model_id": f"{model}-embed", "kind": "embedding"})).status_code \
            == 201
        for name, sim, priority in (("a", a, 10), ("b", b, 5)):
            registered = await probe.admin("POST", "/endpoints", {
                "endpoint_id": ids[name], "provider_id": ids["provider"], "base_url": sim.url,
                "models": [model, f"{model}-embed"], "priority": priority, "timeout_s": 30,
                "first_byte_timeout_s": FIRST_BYTE_S})
            assert registered.status_code == 201, registered.text
        probe.tenant, probe.member = await probe.tenant_with()
        await wait_for(lambda: a.stats.requests.get("/v1/models") and b.stats.requests.get("/v1/models"), 15,
                       what="the router's first probes")
        try:
            yield probe
        finally:
            for name in ("a", "b"):
                await probe.admin("DELETE", f"/endpoints/{ids[name]}")


async def counters(urls, tenant: str) -> dict[str, int]:
    client = redis.from_url(urls.redis_url)
    try:
        found = {}
        async for key in client.scan_iter(match=f"{PREFIX}c:{tenant}:*"):
            found.update({f"{key.decode()}/{k.decode()}": int(v) for k, v in (await client.hgetall(key)).items()})
        return found
    finally:
        await client.aclose()


async def holds(urls) -> set[str]:
    """The request ids of the calls holding quota (a hold is named `<request id>/<usage event id>`)."""
    client = redis.from_url(urls.redis_url)
    try:
        return {name.decode().rpartition("/")[0] for name in await client.zrange(f"{PREFIX}holds", 0, -1)}
    finally:
        await client.aclose()


# --- 1, 8: hostile values never reach the reservation ---------------------------------------------

HOSTILE = [
    ("/v1/chat/completions", {"max_tokens": 9223372036854775807}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": -1000000000000000}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 2**64}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": CONTEXT + 1}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": "100"}, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("/v1/chat/completions", {"n": 0}, "n"),
    ("/v1/chat/completions", {"n": 100000}, "n"),
    ("/v1/chat/completions", {"top_logprobs": 99}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages[0].role"),
    ("/v1/completions", {"max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"best_of": 50}, "best_of"),
    ("/v1/completions", {"logprobs": 10}, "logprobs"),
    ("/v1/embeddings", {"dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"dimensions": 10**9}, "dimensions"),
    ("/api/chat", {"options": {"num_predict": -5}}, "options.num_predict"),
    ("/api/chat", {"options": {"num_predict": 10**12}}, "options.num_predict"),
    ("/api/chat", {"options": {"num_ctx": 10**9}}, "options.num_ctx"),
    ("/api/generate", {"options": {"num_predict": "many"}}, "options.num_predict"),
    ("/api/generate", {"options": {"num_predict": 2**64}}, "options.num_predict"),
    ("/api/embed", {"dimensions": -3}, "dimensions"),
    # fields the OpenAI door passes on unread, of the wrong type (they went on as written)
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": 5}, "logprobs"),
    ("/v1/chat/completions", {"parallel_tool_calls": "x"}, "parallel_tool_calls"),
    ("/v1/chat/completions", {"store": "x"}, "store"),
    ("/v1/chat/completions", {"tool_choice": "bogus"}, "tool_choice"),
    ("/v1/chat/completions", {"tool_choice": 5}, "tool_choice"),
    ("/v1/chat/completions", {"tool_choice": {"function": {"name": "f"}}}, "tool_choice.type"),
    ("/v1/chat/completions", {"response_format": "json"}, "response_format"),
    ("/v1/chat/completions", {"response_format": {"type": "bogus"}}, "response_format.type"),
    ("/v1/chat/completions", {"response_format": {}}, "response_format.type"),
    ("/v1/chat/completions", {"metadata": "x"}, "metadata"),
    ("/v1/chat/completions", {"metadata": {"a": 1}}, "metadata"),
    ("/v1/chat/completions", {"modalities": "text"}, "modalities"),
    ("/v1/chat/completions", {"stop": [str(n) for n in range(65)]}, "stop"),
    ("/v1/chat/completions", {"user": 5}, "user"),
    ("/v1/completions", {"stop": [str(n) for n in range(65)]}, "stop"),
    ("/v1/completions", {"echo": "x"}, "echo"),
    ("/v1/completions", {"n": 0}, "n"),
    ("/v1/completions", {"n": 129}, "n"),
    ("/v1/embeddings", {"user": 5}, "user"),
]


async def test_hostile_numbers_get_400_naming_the_field_and_reserve_nothing(lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=20_000, rpm=1000)
    refused_ids = []
    async with httpx.AsyncClient(timeout=15) as client:
        for path, fields, param in HOSTILE:
            request_id = uuid.uuid4().hex
            refused_ids.append(request_id)
            model = f"{lab.model}-embed" if "embed" in path else lab.model
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key, request_id),
                                      json=lab.body(path, **fields) | {"model": model})
            assert reply.status_code == 400, (path, fields, reply.text)
            error = reply.json()["error"]
            if path.startswith("/v1/"):
                assert error["param"] == param, (path, fields, error)
            else:
                assert param in error, (path, fields, error)      # Ollama's shape: {"error": "<message>"}
        assert await counters(urls, tenant) == {}, "nothing was reserved, not even a request"
        sentinel = uuid.uuid4().hex
        ok = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key, sentinel),
                               json=lab.body(max_tokens=5))
        assert ok.status_code == 200, ok.text
    await exactly_one_usage_row(lab.demo, sentinel)
    for request_id in refused_ids:
        assert await usage_rows(lab.demo, request_id) == [], "a refused call records nothing"


@pytest.mark.parametrize(("path", "tail"), [
    ("/v1/chat/completions", b'"x_vendor_knob": 1e400'),
    ("/v1/completions", b'"x_vendor_knob": [-1e999]'),
    ("/api/chat", b'"options": {"mirostat_tau": 1e400}'),
    ("/api/generate", b'"options": {"mirostat_tau": 1' + b"0" * 400 + b'.5}'),
])
async def test_a_float_past_float64_in_a_field_the_gateway_does_not_read_passes_on_as_written(
        lab: Lab, path: str, tail: bytes) -> None:
    """JSON allows such a number; a body the gateway rewrites (the ceiling, a translation) keeps it as it would in a
    body sent untouched, rather than failing after the call was accepted."""
    tenant, key = await lab.tenant_with(daily_tokens=20_000, default_max_tokens=5)   # a ceiling: rewritten
    request_id = uuid.uuid4().hex
    body = msgspec.json.encode(lab.body(path))[:-1] + b", " + tail + b"}"
    async with httpx.AsyncClient(timeout=15) as client:
        reply = await client.post(f"{lab.demo.url}{path}", content=body,
                                  headers={**lab.headers(key, request_id), "Content-Type": "application/json"})
    assert reply.status_code == 200, reply.text
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert (event["outcome"], event["status"], event["output_tokens"]) == ("ok", 200, 5)


async def test_bodies_nested_100000_deep_get_400_everywhere(lab: Lab, second_gateway: Gateway) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    chat = b'{"model": "' + lab.model.encode() + b'", "messages": [], "x": ' + deep + b"}"
    admin = {"X-API-Key": lab.demo.admin_key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=15) as client:
        for path in ("/v1/chat/completions", "/api/chat", "/v1/embeddings"):
            reply = await client.post(f"{lab.demo.url}{path}", content=chat, headers=lab.headers())
            assert reply.status_code == 400, (path, reply.text)
        for method, path in (("POST", "/api/admin/tenants"), ("PUT", f"/api/admin/tenants/{lab.tenant}/limits"),
                             ("POST", "/api/admin/registry/import"), ("POST", "/api/stats")):
            reply = await client.request(method, f"{lab.demo.url}{path}", content=deep, headers=admin)
            assert reply.status_code == 400, (path, reply.text)
        token = jwt.encode({"iss": "switchyard", "tenant": lab.tenant, "exp": 10**18}, JWT_SECRET, algorithm="HS256")
        models = await client.get(f"{second_gateway.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert models.status_code == 200, "an exp of 10^18 means a token that does not expire, not a crash"
        inf = jwt.encode({"iss": "switchyard", "tenant": lab.tenant, "exp": 1e308 * 10}, JWT_SECRET, algorithm="HS256")
        assert (await client.get(f"{second_gateway.url}/v1/models",
                                 headers={"Authorization": f"Bearer {inf}"})).status_code == 401


@pytest.mark.parametrize(("path", "fields", "field_name"), [
    ("/tenants", {"tenant_id": "big-name", "display_name": "x" * 1_000_000}, "display_name"),
    ("/providers", {"provider_id": "big-p", "kind": "openai", "display_name": "y" * 5000}, "display_name"),
    ("/endpoints", {"endpoint_id": "big-e", "provider_id": "big-p", "base_url": "http://h/" + "z" * 5000},
     "base_url"),
    ("/models", {"model_id": "big-m", "aliases": [f"a{i}" for i in range(5000)]}, "aliases"),
    ("/models", {"model_id": "big-m", "context_length": 10**15}, "context_length"),
    ("/models", {"model_id": "big-m", "output_price_per_1m": 1e300}, "output_price_per_1m"),
])
async def test_admin_fields_have_bounds_and_oversized_ones_get_400_naming_them(
        demo: DemoStack, path: str, fields: dict, field_name: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{demo.url}/api/admin{path}", json=fields, headers={"X-API-Key": demo.admin_key})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["field"] == field_name


# --- 9: a 413 that clients writing their whole body first can read --------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/admin/tenants"])
def test_a_client_writing_64_mib_before_reading_reads_the_413(demo: DemoStack, path: str) -> None:
    body = b"x" * (64 * 1024 * 1024)
    headers = {"Authorization": f"Bearer {demo.admin_key}", "Content-Type": "application/json"}
    reply = requests.post(f"{demo.url}{path}", data=body, headers=headers, timeout=60)
    assert reply.status_code == 413
    request = urllib.request.Request(f"{demo.url}{path}", data=body, headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413


# --- 2: the reservation is a ceiling ----------------------------------------------------------------


@pytest.mark.parametrize("path", CHAT)
async def test_a_call_naming_no_output_limit_is_held_to_the_default_and_stops_at_length(lab: Lab, urls,
                                                                                     path: str) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=20_000, default_max_tokens=50)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=15) as client:
        reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key, request_id), json=lab.body(path))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    if path.startswith("/v1/"):
        assert answer["usage"]["completion_tokens"] == 50 and answer["choices"][0]["finish_reason"] == "length"
        assert reply.headers["x-ratelimit-limit-tokens"] == "20000"
    else:
        assert answer["eval_count"] == 50 and answer["done_reason"] == "length"
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["output_tokens"] == 50


async def test_an_explicit_max_tokens_is_capped_by_what_is_left(lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=400)
    async with httpx.AsyncClient(timeout=15) as client:
        first = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key),
                                  json=lab.body(max_tokens=CONTEXT))
        assert first.status_code == 200
        used = first.json()["usage"]["total_tokens"]
        assert used <= 400 and first.json()["choices"][0]["finish_reason"] == "length"
        second = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key),
                                   json=lab.body(max_tokens=100))
    assert second.status_code == 402, "nothing is left: not even the prompt fits"
    log_tokens, counter = await settled(lab.demo, urls, tenant, 1)
    assert log_tokens == used == counter["tok"] <= 400


async def test_calls_sharing_one_request_id_each_keep_their_own_hold(lab: Lab, urls) -> None:
    """Clients choose X-Request-Id: a short call reusing a long call's id, once settled, must not free the long
    call's hold, or a caller could run a new limit's worth of calls beside every one still running."""
    limit = 1000
    tenant, key = await lab.tenant_with(daily_tokens=limit)
    lab.a.configure(token_interval_ms=10)           # 300 tokens: about 3 s of stream
    shared = uuid.uuid4().hex

    async def call(client: httpx.AsyncClient, request_id: str, max_tokens: int, stream: bool) -> int:
        reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key, request_id),
                                  json=lab.body(max_tokens=max_tokens, stream=stream))
        return reply.status_code

    async with httpx.AsyncClient(timeout=60) as client:
        long = [asyncio.ensure_future(call(client, shared, 300, True)) for _ in range(3)]
        await wait_for(lambda: lab.a.stats.requests.get("/v1/chat/completions", 0) >= 3, 10, what="three streams")
        lab.a.configure(token_interval_ms=0)
        assert await call(client, shared, 5, False) == 200
        await settled(lab.demo, urls, tenant, 1)     # the short call is settled while the long ones stream
        lab.a.configure(token_interval_ms=10)
        late = [await call(client, uuid.uuid4().hex, 300, False) for _ in range(2)]
        statuses = [*await asyncio.gather(*long), *late]
    answered = statuses.count(200) + 1
    log_tokens, counter = await settled(lab.demo, urls, tenant, answered)
    assert log_tokens <= limit, f"settled {log_tokens} tokens of a {limit} limit ({statuses})"
    assert counter["tok"] == log_tokens


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_tools_offered_are_held_as_prompt_so_they_cannot_carry_a_caller_past_the_limit(
        lab: Lab, urls, path: str) -> None:
    """A server renders the tools offered into the prompt and bills them as prompt tokens: a caller offering a
    large tool with a short message must reserve them too, or each call settles far more than it held."""
    limit = 2000
    tenant, key = await lab.tenant_with(daily_tokens=limit)
    tools = [{"type": "function", "function": {
        "name": "book_freight", "description": "book a slot for the freight train on the line " * 90,
        "parameters": {"type": "object", "properties": {"yard": {"type": "string"}}}}}]
    output = {"max_tokens": 5} if path.startswith("/v1/") else {"options": {"num_predict": 5}}
    statuses = []
    async with httpx.AsyncClient(timeout=15) as client:
        for _ in range(4):
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key),
                                      json=lab.body(path, tools=tools, **output))
            statuses.append(reply.status_code)
    log_tokens, counter = await settled(lab.demo, urls, tenant, statuses.count(200))
    assert log_tokens <= limit, f"settled {log_tokens} tokens of a {limit} limit ({statuses})"
    assert counter["tok"] == log_tokens and statuses[-1] == 402


PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000105fe02fea70000000049454e44ae426082")).decode()


def _with_images(lab: Lab, path: str, images: int) -> dict[str, Any]:
    """A short question about `images` images, in the door's way of sending them, asking 5 tokens back."""
    question = "which yard is this"
    if path == "/v1/chat/completions":
        parts = [{"type": "text", "text": question}] + [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}] * images
        return lab.body(path, messages=[{"role": "user", "content": parts}], max_tokens=5)
    if path == "/api/chat":
        return lab.body(path, messages=[{"role": "user", "content": question, "images": [PIXEL] * images}],
                        options={"num_predict": 5})
    return lab.body(path, prompt=question, images=[PIXEL] * images, options={"num_predict": 5})


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/generate"])
async def test_images_are_held_as_prompt_so_they_cannot_carry_a_caller_past_the_limit(
        lab: Lab, urls, path: str) -> None:
    """A vision model bills each image as prompt tokens (hundreds to thousands): a caller sending images with
    a short text must reserve them, or each call settles far more than it held (here each call settles about
    4,500 tokens; held as text alone it would hold about 20 and a second call would go through)."""
    limit = 5000
    for sim in (lab.a, lab.b):
        sim.configure(image_tokens=1500)
    tenant, key = await lab.tenant_with(daily_tokens=limit)
    statuses = []
    async with httpx.AsyncClient(timeout=15) as client:
        for _ in range(3):
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key),
                                      json=_with_images(lab, path, 3))
            statuses.append(reply.status_code)
    log_tokens, counter = await settled(lab.demo, urls, tenant, statuses.count(200))
    assert statuses[0] == 200 and log_tokens >= 3 * 1500, (statuses, log_tokens)     # the images were billed
    assert log_tokens <= limit, f"settled {log_tokens} tokens of a {limit} limit ({statuses})"
    assert counter["tok"] == log_tokens and statuses[1:] == [402, 402]


async def test_a_part_the_gateway_cannot_count_holds_the_whole_context(lab: Lab, urls) -> None:
    """Audio or a file is billed as prompt the gateway cannot count: the call holds the model's whole context
    (8,192 here), so a tenant with less left than that is refused before anything is sent, and one with more
    is served; the same text without the part is served either way."""
    audio = {"type": "input_audio", "input_audio": {"data": PIXEL, "format": "wav"}}
    text = {"type": "text", "text": "what is announced on platform nine"}
    _, small = await lab.tenant_with(daily_tokens=5000)
    _, large = await lab.tenant_with(daily_tokens=20_000)
    async with httpx.AsyncClient(timeout=15) as client:
        async def status(key: str, parts: list[dict[str, Any]]) -> int:
            body = lab.body(messages=[{"role": "user", "content": parts}], max_tokens=5)
            return (await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key),
                                      json=body)).status_code
        assert await status(small, [text, audio]) == 402
        assert await status(small, [text]) == 200
        assert await status(large, [text, audio]) == 200


async def test_embeddings_hold_exactly_their_counted_input(lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=10_000)
    lab.a.configure(latency_ms=1500)                   # long enough to read the hold while the call runs
    request_id = uuid.uuid4().hex
    text = "the points switch the freight train onto track nine"
    async with httpx.AsyncClient(timeout=15) as client:
        call = asyncio.ensure_future(client.post(
            f"{lab.demo.url}/v1/embeddings", headers=lab.headers(key, request_id),
            json={"model": f"{lab.model}-embed", "input": text}))
        await wait_for(lambda: _holds_request(urls, request_id), what="the hold")
        held = await counters(urls, tenant)
        assert (await call).status_code == 200
    assert {k: v for k, v in held.items() if k.endswith("/tok")} and \
        set(v for k, v in held.items() if k.endswith("/tok")) == {ESTIMATOR.count(text)}


async def _holds_request(urls, request_id: str) -> bool:
    return request_id in await holds(urls)


# --- 4: hung upstreams --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_with_one_endpoint_hanging_calls_complete_through_the_other_and_its_breaker_opens(
        lab: Lab, stream: bool) -> None:
    lab.a.configure(failure_kind="hang", failure_rate=1.0, failure_paths=("/v1/chat/completions",))
    durations = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(8):
            started = time.monotonic()
            reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                      json=lab.body(max_tokens=4, stream=stream))
            durations.append(time.monotonic() - started)
            assert reply.status_code == 200, reply.text
            if await lab.circuit("a") == "open":
                break
        await wait_for(lambda: _state_is(lab, "a", "open"), 10, what="the hung endpoint's breaker open")
        assert len(durations) <= 6, "the breaker opens within a few calls"
        assert max(durations) < FIRST_BYTE_S + 3.0, durations
        started = time.monotonic()
        reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                  json=lab.body(max_tokens=4, stream=stream))
        assert reply.status_code == 200 and time.monotonic() - started < FIRST_BYTE_S, "no more waiting on it"
    assert lab.b.stats.requests["/v1/chat/completions"] >= len(durations) + 1


async def test_new_calls_go_around_an_endpoint_whose_answers_stopped_starting(lab: Lab) -> None:
    """A hung endpoint with the higher priority and a long first-byte timeout: its breaker hears nothing for a
    minute, but once its oldest attempt has waited past the stall bound (5 s here, where answers start in
    milliseconds) with nothing answered since, new calls go to the other endpoint and complete at once."""
    from switchyard_gateway.services.gateway.pipeline.stalls import STALL_MIN_S

    assert (await lab.admin("PUT", f"/endpoints/{lab.ids['a']}", {"first_byte_timeout_s": 60})).status_code == 200
    async with httpx.AsyncClient(timeout=30) as client:         # a's answers start quickly while it is well
        for _ in range(3):
            assert (await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                      json=lab.body(max_tokens=2))).status_code == 200
    assert lab.a.stats.requests["/v1/chat/completions"] >= 1
    lab.a.configure(failure_kind="hang", failure_rate=1.0, failure_paths=("/v1/chat/completions",))
    calls: list[tuple[float, float | None]] = []               # (sent, took) of each call, None while waiting

    async def one(number: int) -> None:
        sent = time.monotonic()
        calls.append((sent, None))
        async with httpx.AsyncClient(timeout=90) as fresh:      # a connection of its own: any gateway worker
            reply = await fresh.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                     json=lab.body(max_tokens=2))
        assert reply.status_code == 200, reply.text
        calls[number] = (sent, time.monotonic() - sent)

    began = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    try:
        quiet_from = began + STALL_MIN_S + 3.0                  # every worker has had a call stuck by then
        while time.monotonic() < quiet_from + 3.0:
            tasks.append(asyncio.create_task(one(len(tasks))))
            await asyncio.sleep(0.25)
        late = [number for number, (sent, _) in enumerate(calls) if sent > quiet_from]
        await wait_for(lambda: all(calls[n][1] is not None for n in late), 20,
                       what="every call sent after the stall bound to complete")
        assert late and max(calls[n][1] for n in late) < 3.0, [calls[n] for n in late]
        assert await lab.circuit("a") == "closed", "the breaker heard nothing from the stall"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lab.a.configure(failure_rate=0.0)


async def _state_is(lab: Lab, name: str, state: str) -> bool:
    return await lab.circuit(name) == state


async def test_a_first_byte_slower_than_the_timeout_moves_the_call_on(lab: Lab) -> None:
    lab.a.configure(latency_ms=FIRST_BYTE_S * 1000 + 2000)
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(request_id=request_id),
                                  json=lab.body(max_tokens=4, stream=True))
    assert reply.status_code == 200
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["endpoint_id"] == lab.ids["b"] and event["attempts"] == 2


# --- 10: recovery -------------------------------------------------------------------------------------


async def test_an_endpoint_whose_calls_hung_gets_traffic_within_5_s_of_answering_again(lab: Lab) -> None:
    """Its model list answered all along, so only a trial call can tell it works again: a successful probe lets
    trials through 2 s after the breaker opened, however often its trials failed (the cool-down would have
    doubled to 20 s here)."""
    lab.a.configure(failure_kind="hang", failure_rate=1.0, failure_paths=("/v1/chat/completions",))
    async with httpx.AsyncClient(timeout=30) as client:
        hung_until = time.monotonic() + 15.0                 # open, trials failing, open again, ...
        while time.monotonic() < hung_until:
            reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                      json=lab.body(max_tokens=2))
            assert reply.status_code == 200, reply.text
            await asyncio.sleep(0.1)
        assert await lab.circuit("a") in ("open", "half_open")
        await recovered_within_5_s(lab, client)


async def test_an_endpoint_that_answers_again_gets_traffic_within_5_s(lab: Lab) -> None:
    lab.a.configure(failure_kind="refuse", failure_rate=1.0)
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(10):
            await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                              json=lab.body(max_tokens=2))
            if await lab.circuit("a") == "open":
                break
        await wait_for(lambda: _state_is(lab, "a", "open"), 10, what="breaker open")
        await recovered_within_5_s(lab, client)


async def recovered_within_5_s(lab: Lab, client: httpx.AsyncClient) -> None:
    """Endpoint `a` answers again from now: calls at a steady pace must reach it within 5 s, each served."""
    served_before = lab.a.stats.requests.get("/v1/chat/completions", 0)
    lab.a.configure(failure_rate=0.0)
    back = time.monotonic()
    while lab.a.stats.requests.get("/v1/chat/completions", 0) == served_before:
        assert time.monotonic() - back < 5.0, "no traffic reached the recovered endpoint within 5 s"
        reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                  json=lab.body(max_tokens=2))
        assert reply.status_code == 200
        await asyncio.sleep(0.1)        # one call every 100 ms, as steady traffic would


# --- 5, 6: clients that leave ---------------------------------------------------------------------------


async def test_a_client_leaving_before_the_first_byte_cancels_the_upstream_call_and_frees_its_quota(
        lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=20_000)
    lab.a.configure(latency_ms=20_000)
    lab.b.configure(latency_ms=20_000)
    await lab.admin("PUT", f"/endpoints/{lab.ids['a']}", {"first_byte_timeout_s": 60})
    request_id = uuid.uuid4().hex
    body = lab.body(max_tokens=10)
    with pytest.raises(httpx.ReadTimeout):
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=1.0)) as client:
            await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key, request_id), json=body)
    left = time.monotonic()
    await wait_for(lambda: lab.a.stats.abandoned == 1, 5, what="the upstream connection closed mid-answer")
    await wait_for(lambda: _released(urls, request_id), 5, what="the quota hold released")
    assert time.monotonic() - left < 5, "released at once, not after the hold's 600 s"
    event = await exactly_one_usage_row(lab.demo, request_id)
    prompt = 3 + 3 + ESTIMATOR.count(body["messages"][0]["content"])
    assert (event["outcome"], event["output_tokens"], event["input_tokens"]) == ("cancelled", 0, prompt)
    assert event["status"] == 499, "nothing was sent: the client closed the request"
    assert event["estimated"] is True
    assert lab.b.stats.requests.get("/v1/chat/completions", 0) == 0, "the call did not move on to another endpoint"


async def _released(urls, request_id: str) -> bool:
    return request_id not in await holds(urls)


async def test_a_client_leaving_mid_stream_stops_the_upstream_and_records_what_was_streamed(lab: Lab, urls) -> None:
    tenant, key = await lab.tenant_with(daily_tokens=20_000)
    lab.a.configure(token_interval_ms=100)
    request_id = uuid.uuid4().hex
    seen = 0
    async with httpx.AsyncClient(timeout=30) as client, client.stream(
            "POST", f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key, request_id),
            json=lab.body(max_tokens=500, stream=True)) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            seen += chunk.count(b'"content":')
            if seen >= 4:
                break
    await wait_for(lambda: lab.a.stats.abandoned == 1, 5, what="the upstream connection closed mid-stream")
    await wait_for(lambda: _released(urls, request_id), 5, what="the quota hold released")
    event = await exactly_one_usage_row(lab.demo, request_id)
    assert event["outcome"] == "cancelled" and 4 <= event["output_tokens"] < 100


# --- 7: upstream credentials ----------------------------------------------------------------------------


async def test_an_upstream_refusing_the_gateways_credentials_is_a_502_upstream_auth(lab: Lab) -> None:
    for name, sim in (("a", lab.a), ("b", lab.b)):
        sim.configure(api_key="the-real-key")
        assert (await lab.admin("PUT", f"/endpoints/{lab.ids[name]}",
                                {"api_key_ref": f"${{{UNSET_CREDENTIAL}}}"})).status_code == 200
    async with httpx.AsyncClient(timeout=30) as client:
        member = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(),
                                   json=lab.body(max_tokens=2))
        assert member.status_code == 502 and member.json()["error"]["code"] == "upstream_auth"
        assert lab.tag not in member.text, "a member is not told which endpoint"
        operator = await client.post(f"{lab.demo.url}/v1/chat/completions",
                                     headers=lab.headers(lab.demo.admin_key), json=lab.body(max_tokens=2))
        assert operator.status_code == 502 and lab.ids["b"] in operator.json()["error"]["message"]
        for _ in range(4):
            await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(), json=lab.body())
        await wait_for(lambda: _state_is(lab, "a", "open"), 10, what="refused credentials count against it")
        health = (await client.get(f"{lab.demo.url}/health", headers={"X-API-Key": lab.demo.admin_key})).json()
        assert health["endpoints"][lab.ids["a"]]["credential_missing"] is True
        assert UNSET_CREDENTIAL in health["endpoints"][lab.ids["a"]]["detail"]
        status = (await lab.admin("GET", "/registry/status")).json()
        mine = next(e for e in status["endpoints"] if e["endpoint_id"] == lab.ids["a"])
        assert mine["credential_missing"] is True and mine["healthy"] is False


# --- 11: members see no upstream URLs --------------------------------------------------------------------


async def test_members_see_no_upstream_urls(lab: Lab) -> None:
    async with httpx.AsyncClient(timeout=15) as client:
        for path in ("/api/config", "/health"):
            member = await client.get(f"{lab.demo.url}{path}", headers=lab.headers())
            assert lab.ids["a"] in member.text or path == "/health"
            for sim in (lab.a, lab.b):
                assert sim.url not in member.text and f":{sim.port}" not in member.text, path
        operator = await client.get(f"{lab.demo.url}/api/config", headers={"X-API-Key": lab.demo.admin_key})
        assert lab.a.url in operator.text


# --- 12: the concurrency test: two gateways, 200 concurrent calls, hostile values among them ---------------


async def test_200_concurrent_calls_on_two_gateways_with_hostile_values_never_exceed_the_limit(
        lab: Lab, urls, second_gateway: Gateway) -> None:
    limit = 20_000
    tenant, key = await lab.tenant_with(daily_tokens=limit)
    for name in ("a", "b"):                 # 200 calls at once on two shared cores: give answers time to start
        assert (await lab.admin("PUT", f"/endpoints/{lab.ids[name]}", {"first_byte_timeout_s": 60})).status_code \
            == 200
    mixes: list[dict[str, Any]] = [
        {}, {"max_tokens": 300}, {"max_tokens": 2000}, {"max_tokens": 9223372036854775807},
        {"max_tokens": -1000000000000000}, {"max_tokens": 2**64}, {"n": 3}, {"max_completion_tokens": 700},
    ]
    gateways = (lab.demo.url, second_gateway.url)

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(f"{gateways[i % 2]}/v1/chat/completions", headers=lab.headers(key),
                                 json=lab.body(**mixes[i % len(mixes)], stream=i % 3 == 0))

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        replies = await asyncio.gather(*(one(client, i) for i in range(200)))
    statuses = [r.status_code for r in replies]
    hostile = [i for i in range(200) if i % len(mixes) in (3, 4, 5)]
    assert all(statuses[i] == 400 for i in hostile)
    assert set(statuses) <= {200, 400, 402}, statuses
    answered = statuses.count(200)
    assert statuses.count(402) > 0, "the quota was reached"
    log_tokens, counter = await settled(lab.demo, urls, tenant, answered)
    overshoot = log_tokens / limit
    print(f"\nconcurrency: {answered} answered, {statuses.count(402)} refused 402, {len(hostile)} refused 400; "
          f"settled {log_tokens} of {limit} tokens: settled / limit = {overshoot:.4f}")
    assert log_tokens <= limit, f"settled usage exceeded the limit: {overshoot:.4f}"
    assert counter["tok"] == log_tokens, "the log's sum equals the counter"
    assert await holds(urls) & {r.headers.get("x-request-id") for r in replies} == set()


# --- clients that open connections and hold them --------------------------------------------------------


async def test_a_flood_of_idle_connections_neither_starves_callers_nor_takes_the_gateways_files(
        demo: DemoStack, urls) -> None:
    """300 connections opened and left idle against a gateway that may hold 20: each newcomer closes the longest
    idle instead of taking another open file, calls made during the flood are served and recorded once each, and
    /metrics counts what was closed."""
    gateway = start_gateway(demo, urls, workers="1", http_max_connections="20")
    port = int(gateway.url.rsplit(":", 1)[1])
    flood: list[asyncio.StreamWriter] = []
    try:
        for _ in range(300):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            flood.append(writer)
        request_ids = [f"flood-{uuid.uuid4().hex}" for _ in range(5)]
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            for request_id in request_ids:
                reply = await client.post("/v1/chat/completions", headers={
                    "Authorization": f"Bearer {demo.demo_key}", "X-Request-Id": request_id},
                    json={"model": "llama3.2", "messages": [{"role": "user", "content": "still there?"}]})
                assert reply.status_code == 200, reply.text
            metrics = (await client.get("/metrics")).text
        for request_id in request_ids:
            assert (await exactly_one_usage_row(demo, request_id))["status"] == 200
        shed = [line for line in metrics.splitlines()
                if line.startswith('switchyard_http_connections_shed_total{how="idle_closed"}')]
        assert shed and float(shed[0].split()[-1]) >= 250, shed
        sockets = sum(1 for fd in os.listdir(f"/proc/{gateway.proc.pid}/fd")
                      if os.readlink(f"/proc/{gateway.proc.pid}/fd/{fd}").startswith("socket:"))
        assert sockets < 20 + 40, f"the gateway holds {sockets} sockets"    # its clients' 20, and its own few
    finally:
        for writer in flood:
            writer.close()
        stop_gateway(gateway)


# --- answers: large ones arrive, runaway ones are bounded -------------------------------------------------


@pytest.mark.parametrize(("path", "inputs"), [("/v1/embeddings", "input"), ("/api/embed", "input")])
async def test_an_answer_of_several_megabytes_arrives_whole(lab: Lab, path: str, inputs: str) -> None:
    """A batch of 400 embeddings answers about 6 MB; the upstream client stops reading past 1 MiB not yet taken,
    so a whole-answer read that took nothing until the end waited out the call's timeouts."""
    texts = [f"text number {n}" for n in range(400)]
    request_id = f"big-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(timeout=60) as client:
        reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(request_id=request_id),
                                  json={"model": f"{lab.model}-embed", inputs: texts})
    assert reply.status_code == 200, reply.text[:300]
    assert len(reply.content) > 2 * 1024 * 1024
    vectors = reply.json()["data"] if path.startswith("/v1") else reply.json()["embeddings"]
    assert len(vectors) == len(texts)
    assert (await exactly_one_usage_row(lab.demo, request_id))["status"] == 200


class Runaway(RawUpstream):
    """An upstream that answers its models list, then answers every call with a body that never ends: a whole
    (chunked) JSON answer, or one SSE event that never gets its blank line; 64 KiB at a time as fast as it is
    taken, or with `trickle_s`, one byte every `trickle_s` seconds."""

    def __init__(self, model: str, trickle_s: float | None = None) -> None:
        super().__init__()
        self.model, self.sent, self.calls, self.trickle_s = model, 0, 0, trickle_s
        self.hung_up = 0                               # calls whose connection the gateway closed

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET"):
            listed = msgspec.json.encode({"object": "list", "data": [{"id": self.model, "object": "model"}]})
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                         % len(listed) + listed)
            await writer.drain()
            return
        self.calls += 1
        streamed = b'"stream":true' in body.replace(b" ", b"")
        kind = b"text/event-stream" if streamed else b"application/json"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"x" if self.trickle_s else b"x" * 65536
        opening = b'data: {"choices": [{"delta": {"content": "' if streamed else b'{"choices": "'
        writer.write(b"%x\r\n%s\r\n" % (len(opening), opening))
        try:
            while True:                                # until the gateway hangs up
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.sent += len(piece)
                await writer.drain()
                if self.trickle_s:
                    await asyncio.sleep(self.trickle_s)
        except ConnectionError:
            self.hung_up += 1
            raise


async def tried_first(lab: Lab, gateway: Gateway, endpoint_id: str, url: str, timeout_s: float) -> None:
    """Register `url` as an endpoint of the lab's model tried before the demo's, and wait until `gateway` knows it."""
    registered = await lab.admin("POST", "/endpoints", {
        "endpoint_id": endpoint_id, "provider_id": lab.ids["provider"], "base_url": url,
        "models": [lab.model], "priority": 50, "timeout_s": timeout_s})
    assert registered.status_code == 201, registered.text
    async with httpx.AsyncClient(timeout=30) as client:
        await wait_for(lambda: client.get(f"{gateway.url}/v1/models", headers=lab.headers()), 15)

        async def endpoint_known() -> bool:
            config = await client.get(f"{gateway.url}/api/config",
                                      headers={"Authorization": f"Bearer {lab.demo.admin_key}"})
            return any(e["id"] == endpoint_id for e in config.json()["endpoints"])
        await wait_for(endpoint_known, 15, what=f"the gateway to know endpoint {endpoint_id}")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_runaway_answer_is_the_endpoints_failure_and_the_call_moves_on(
        lab: Lab, urls, stream: bool) -> None:
    """An endpoint whose answer never ends (a whole answer past SWITCHYARD_MAX_ANSWER_BYTES, or a streamed event past
    8 MiB without its end) fails the attempt: the gateway stops reading it, the call is served by the next endpoint,
    and the worker holds none of it."""
    limit = 2 * 1024 * 1024
    gateway = start_gateway(lab.demo, urls, workers="1", max_answer_bytes=str(limit))
    endpoint_id = f"runaway-{lab.tag}-{int(stream)}"
    try:
        async with Runaway(lab.model) as runaway:
            await tried_first(lab, gateway, endpoint_id, runaway.url, timeout_s=30)
            request_id = f"runaway-{uuid.uuid4().hex}"
            async with httpx.AsyncClient(timeout=60) as client:
                body = lab.body(max_tokens=20, stream=stream)
                reply = await client.post(f"{gateway.url}/v1/chat/completions", json=body,
                                          headers=lab.headers(request_id=request_id))
            assert reply.status_code == 200, reply.text[:300]
            if stream:
                assert reply.text.rstrip().endswith("data: [DONE]")
            else:
                assert reply.json()["choices"][0]["message"]["content"]
            assert runaway.calls == 1
            bound = limit if not stream else 8 * 1024 * 1024
            assert runaway.sent < bound + 16 * 1024 * 1024, runaway.sent        # it was stopped, not read on
            usage = await exactly_one_usage_row(lab.demo, request_id)
            assert usage["status"] == 200 and usage["endpoint_id"] in (lab.ids["a"], lab.ids["b"])
    finally:
        await lab.admin("DELETE", f"/endpoints/{endpoint_id}")
        stop_gateway(gateway)


async def test_a_whole_answer_trickling_past_the_endpoints_timeout_fails_over(lab: Lab, urls) -> None:
    """`timeout_s` bounds the silence between an upstream's bytes; a whole answer that keeps coming a byte every
    0.2 s is never silent that long, and held the call (and its hold) for as long as the upstream liked. A whole
    answer must now be complete within `timeout_s` of its start: the attempt is the endpoint's failure
    (`timeout`), the gateway hangs up on it, and the call is served by the next endpoint, recorded once."""
    gateway = start_gateway(lab.demo, urls, workers="1")
    endpoint_id = f"trickle-{lab.tag}"
    try:
        async with Runaway(lab.model, trickle_s=0.2) as trickle:
            await tried_first(lab, gateway, endpoint_id, trickle.url, timeout_s=1.5)
            request_id = f"trickle-{uuid.uuid4().hex}"
            async with httpx.AsyncClient(timeout=60) as client:
                reply = await client.post(f"{gateway.url}/v1/chat/completions", json=lab.body(max_tokens=20),
                                          headers=lab.headers(request_id=request_id))
            assert reply.status_code == 200, reply.text[:300]
            assert reply.json()["choices"][0]["message"]["content"]
            assert trickle.calls == 1 and trickle.sent >= 3        # it had begun, and kept coming
            await wait_for(lambda: trickle.hung_up == 1, 10, what="the gateway to hang up on the trickle")
            usage = await exactly_one_usage_row(lab.demo, request_id)
            assert usage["status"] == 200 and usage["endpoint_id"] in (lab.ids["a"], lab.ids["b"])
    finally:
        await lab.admin("DELETE", f"/endpoints/{endpoint_id}")
        stop_gateway(gateway)


class LyingCounts(RawUpstream):
    """An upstream serving one model whose answers are fine but whose token counts are not: a whole answer
    reports `usage` (negative, say), a stream's usage chunk `stream_usage` (counts as text, say); the stream's
    `[DONE]` comes without its blank line."""

    def __init__(self, model: str, usage: dict, stream_usage: dict | None) -> None:
        super().__init__()
        self.model, self.usage, self.stream_usage = model, usage, stream_usage

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET"):
            reply, kind = {"object": "list", "data": [{"id": self.model, "object": "model"}]}, b"application/json"
            data = msgspec.json.encode(reply)
        elif head.split(b" ", 2)[1].endswith(b"/embeddings"):
            kind = b"application/json"
            data = msgspec.json.encode({"object": "list", "model": self.model, "usage": self.usage,
                                        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}]})
        elif b'"stream":true' in body.replace(b" ", b""):
            kind = b"text/event-stream"
            chunks = [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in ("counted ", "wrong")]
            chunks += [{"choices": [], "usage": self.stream_usage}] if self.stream_usage is not None else []
            data = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks) \
                + b"data: [DONE]"                                  # without the blank line that ends an event
        else:
            kind = b"application/json"
            data = msgspec.json.encode({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "counted wrong"}, "finish_reason": "stop"}],
                "usage": self.usage})
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: %d\r\n\r\n" % len(data)
                     + data)
        await writer.drain()


class FailingMidStream(RawUpstream):
    """An upstream whose stream says a word, then fails with an error chunk (OpenAI's and vLLM's shape), then
    ends (with `[DONE]` after it when `then_done`, as vLLM does)."""

    def __init__(self, model: str, then_done: bool, failing: dict | None = None) -> None:
        super().__init__()
        self.model, self.then_done = model, then_done
        self.failing = failing or {"error": {"message": "the model ran out of memory", "type": "server_error",
                                             "code": 500}}

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET"):
            data, kind = msgspec.json.encode({"object": "list", "data": [{"id": self.model}]}), b"application/json"
        else:
            kind = b"text/event-stream"
            chunks = [{"choices": [{"index": 0, "delta": {"content": "partly "}}]}, self.failing]
            data = b"".join(b"data: " + msgspec.json.encode(c) + b"\n\n" for c in chunks)
            data += b"data: [DONE]\n\n" if self.then_done else b""
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + b"\r\ncontent-length: %d\r\n\r\n" % len(data)
                     + data)
        await writer.drain()


UNREADABLE_CHUNK = {"choices": [{"index": 0, "delta": {"content": ["parts", "where", "text", "belongs"]}}]}


@pytest.mark.parametrize("then_done", [False, True])
@pytest.mark.parametrize(("door", "failing", "said"), [
    ("/v1/chat/completions", None, "the model ran out of memory"),
    ("/v1/messages", None, "the model ran out of memory"),
    ("/api/chat", None, "the model ran out of memory"),
    ("/v1/messages", UNREADABLE_CHUNK, "not an OpenAI chat chunk"),
    ("/api/chat", UNREADABLE_CHUNK, "not an OpenAI chat chunk"),
])
async def test_an_error_inside_a_stream_reaches_the_client_once_and_the_call_is_an_error(
        lab: Lab, door: str, failing: dict | None, said: str, then_done: bool) -> None:
    """An upstream that failed inside its stream and said so was taken for a cut stream: the client got the
    upstream's error and then the gateway's cut event (two errors), the log said `stream_cut`, and with `[DONE]`
    after the error the call was recorded as ok. A chunk a translating door cannot read was dropped without a
    word (its text lost, the answer ending as if whole); it ends the stream with an error now."""
    model = f"{lab.model}-failing"
    async with FailingMidStream(model, then_done, failing) as upstream, \
            only_endpoint(lab, model, "failing", upstream.url):
        request_id = f"failing-{uuid.uuid4().hex}"
        body = stream_body(model, door)
        reply = await served(lab, door, body, request_id)
        assert reply.status_code == 200, reply.text[:300]
        assert reply.text.count(said) == 1, reply.text
        assert "cut" not in reply.text, reply.text
        if door == "/v1/messages":
            assert reply.text.count("event: error") == 1 and "message_stop" not in reply.text
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["outcome"] == "error" and usage["output_tokens"] >= 1, usage
    logs = (lab.demo.data_dir / "logs" / "gateway.log").read_text().splitlines()
    assert [line for line in logs if request_id in line and "upstream.stream_error" in line], \
        "the upstream's error is logged as such"


def stream_body(model: str, door: str) -> dict[str, Any]:
    """A streamed call's body for a door (Anthropic's asks for `max_tokens`)."""
    body: dict[str, Any] = {"model": model, "stream": True, "messages": [{"role": "user", "content": "route me well"}]}
    if door == "/v1/messages":
        body["max_tokens"] = 20
    return body


@asynccontextmanager
async def only_endpoint(lab: Lab, model: str, name: str, url: str) -> AsyncIterator[str]:
    """The upstream at `url` registered as the only endpoint of `model` (removed afterwards); yields the model."""
    endpoint_id = f"{name}-{lab.tag}-{uuid.uuid4().hex[:4]}"
    assert (await lab.admin("POST", "/models", {"model_id": model})).status_code in (201, 409)
    registered = await lab.admin("POST", "/endpoints", {
        "endpoint_id": endpoint_id, "provider_id": lab.ids["provider"], "base_url": url,
        "models": [model], "priority": 50, "timeout_s": 30})
    assert registered.status_code == 201, registered.text
    try:
        yield model
    finally:
        await lab.admin("DELETE", f"/endpoints/{endpoint_id}")


@asynccontextmanager
async def lying_endpoint(lab: Lab, name: str, usage: dict, stream_usage: dict | None) -> AsyncIterator[str]:
    """A LyingCounts upstream serving model `<lab model>-<name>`, the only endpoint of it (removed afterwards);
    yields the model."""
    model = f"{lab.model}-{name}"
    async with LyingCounts(model, usage, stream_usage) as upstream, only_endpoint(lab, model, name, upstream.url):
        yield model


async def served(lab: Lab, path: str, body: dict[str, Any], request_id: str) -> httpx.Response:
    """`body` posted to the demo's gateway, again while it does not know the model yet (404)."""
    async with httpx.AsyncClient(timeout=30) as client:
        async def once() -> httpx.Response | None:
            reply = await client.post(f"{lab.demo.url}{path}", json=body, headers=lab.headers(request_id=request_id))
            return reply if reply.status_code != 404 else None
        return await wait_for(once, 15, what=f"{body['model']} to be served")


@pytest.mark.parametrize("stream", [False, True])
async def test_token_counts_an_upstream_could_not_have_are_estimated_not_recorded(lab: Lab, stream: bool) -> None:
    """An upstream reporting -1000 prompt tokens gave its tenant credit and its model's cost went negative (and
    the metering service, raising on a counter that may not fall, restarted for each); counts as text made a
    usage event the log refused (no event for the call at all). They are estimated now, as when none come. The
    stream's `[DONE]` without its blank line ends it (it was called cut)."""
    async with lying_endpoint(lab, "lying", usage={"prompt_tokens": -1000, "completion_tokens": -500,
                                                   "total_tokens": -1500},
                              stream_usage={"prompt_tokens": "7", "completion_tokens": 2**63, "total_tokens": 9}) \
            as model:
        request_id = f"lying-{uuid.uuid4().hex}"
        reply = await served(lab, "/v1/chat/completions", {**lab.body(stream=stream), "model": model}, request_id)
        assert reply.status_code == 200, reply.text[:300]
        if stream:
            assert reply.text.rstrip().endswith("data: [DONE]") and "stream_cut" not in reply.text
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["outcome"] == "ok" and usage["estimated"] is True, usage
        assert 0 < usage["input_tokens"] < 100 and 0 < usage["output_tokens"] < 100, usage
    logs = (lab.demo.data_dir / "logs" / "metering.log").read_text()
    assert "task_crashed" not in logs and "MsgAlreadyAckd" not in logs


@pytest.mark.parametrize("door", ["/v1/messages", "/api/chat"])
@pytest.mark.parametrize(("name", "reported"), [
    ("textual", {"prompt_tokens": "10", "completion_tokens": 5, "total_tokens": 15}),
    ("negative", {"prompt_tokens": 0, "completion_tokens": -5, "total_tokens": -5}),
    ("vast", {"prompt_tokens": 10**15, "completion_tokens": 10**15, "total_tokens": 2 * 10**15}),
    ("cachey", {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 50}}),
])
async def test_a_translated_stream_shows_the_counts_the_log_records(lab: Lab, door: str, name: str,
                                                                     reported: dict) -> None:
    """A translated stream showed the upstream's counts as written when the relay believed none of them (-5 output
    tokens, 10^15, 50 cached of a 10-token prompt) while the log recorded the gateway's estimate; counts as text
    raised inside the Anthropic translation and the stream stopped without its end (the SDK's final message had no
    stop reason)."""
    async with lying_endpoint(lab, f"s{name}", usage={}, stream_usage=reported) as model:
        request_id = f"{name}-{uuid.uuid4().hex}"
        body = stream_body(model, door)
        reply = await served(lab, door, body, request_id)
        assert reply.status_code == 200, reply.text[:300]
        if door == "/v1/messages":
            events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
            assert [e["type"] for e in events][-2:] == ["message_delta", "message_stop"], reply.text[-300:]
            totals = events[-2]["usage"]
            shown = (totals["input_tokens"] + totals.get("cache_read_input_tokens", 0), totals["output_tokens"])
        else:
            last = json.loads(reply.text.strip().splitlines()[-1])
            assert last["done"] is True, last
            shown = (last["prompt_eval_count"], last["eval_count"])
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["outcome"] == "ok", usage
        assert shown == (usage["input_tokens"], usage["output_tokens"]), (shown, usage)
        assert usage["cached_tokens"] <= usage["input_tokens"]


async def test_a_client_asking_for_usage_is_shown_what_is_recorded_when_the_upstream_sends_none(lab: Lab) -> None:
    """`stream_options.include_usage` promises a last chunk with usage. An upstream that sends none left the client
    with none, while the gateway recorded an estimate; the client now gets the same figures as the log."""
    async with lying_endpoint(lab, "quiet", usage={}, stream_usage=None) as model:
        request_id = f"quiet-{uuid.uuid4().hex}"
        body = {**lab.body(stream=True), "model": model, "stream_options": {"include_usage": True}}
        reply = await served(lab, "/v1/chat/completions", body, request_id)
        assert reply.status_code == 200, reply.text[:300]
        events = [e[6:] for e in reply.text.split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        shown = json.loads(events[-2])
        assert shown["choices"] == [] and set(shown["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["estimated"] is True and usage["outcome"] == "ok"
        assert (shown["usage"]["prompt_tokens"], shown["usage"]["completion_tokens"]) == \
            (usage["input_tokens"], usage["output_tokens"])


@pytest.mark.parametrize(("max_tokens", "estimated"), [(50, -(-len('"counted wrong"') // 4)), (2, 2)])
async def test_a_whole_answer_without_counts_is_charged_what_the_model_wrote_never_past_its_limit(
        lab: Lab, max_tokens: int, estimated: int) -> None:
    """Without counts a whole answer's output was a token per 4 bytes of the whole JSON answer, wrapping and all:
    "ok" was 45 to 66 output tokens, past a `max_tokens` of 50. Now what the model wrote, at most its limit."""
    async with lying_endpoint(lab, f"wordy{max_tokens}", usage={}, stream_usage=None) as model:
        request_id = f"wordy-{uuid.uuid4().hex}"
        body = {**lab.body(), "model": model, "max_tokens": max_tokens}
        reply = await served(lab, "/v1/chat/completions", body, request_id)
        assert reply.status_code == 200, reply.text[:300]
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["estimated"] is True and usage["output_tokens"] == estimated, usage


@pytest.mark.parametrize("door", ["/v1/messages", "/api/chat"])
@pytest.mark.parametrize(("name", "reported"), [
    ("mute", {}),
    ("texty", {"prompt_tokens": "7", "completion_tokens": "2", "total_tokens": "9"}),
    ("vast", {"prompt_tokens": 7, "completion_tokens": 2**70, "total_tokens": 2**70 + 7}),
])
async def test_a_translated_whole_answer_shows_what_is_recorded_when_the_upstream_reports_no_usage(
        lab: Lab, door: str, name: str, reported: dict) -> None:
    """An upstream answering `"usage": {}` was billed 0/0 (taken as a report of nothing), and the Anthropic door
    showed its client 0/0 while the log recorded an estimate. Both now carry the same estimate. Counts as text
    made a translated answer unreadable (the call failed over, here to no other endpoint: 502) while the OpenAI
    door estimated them."""
    async with lying_endpoint(lab, name, usage=reported, stream_usage=None) as model:
        request_id = f"{name}-{uuid.uuid4().hex}"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "route me well"}]}
        body.update({"max_tokens": 20} if door == "/v1/messages" else {"stream": False})
        reply = await served(lab, door, body, request_id)
        assert reply.status_code == 200, reply.text[:300]
        shown = reply.json()["usage"] if door == "/v1/messages" else reply.json()
        counts = ("input_tokens", "output_tokens") if door == "/v1/messages" else ("prompt_eval_count", "eval_count")
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["estimated"] is True and usage["input_tokens"] > 0 and usage["output_tokens"] > 0, usage
        assert usage["outcome"] == "ok" and usage["attempts"] == 1, usage
        assert (shown[counts[0]], shown[counts[1]]) == (usage["input_tokens"], usage["output_tokens"])


class UnreadableAnswers(RawUpstream):
    """An upstream whose whole chat answers report true counts but hold what no translation reads: a tool call's
    arguments as an object instead of JSON text."""

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"GET"):
            data = msgspec.json.encode({"object": "list", "data": [{"id": self.model}]})
        else:
            call = {"id": "c1", "type": "function", "function": {"name": "look", "arguments": {"q": 1}}}
            data = msgspec.json.encode({"object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                 "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                     % len(data) + data)
        await writer.drain()


@pytest.mark.parametrize("door", ["/v1/messages", "/api/chat"])
async def test_an_answer_no_translation_can_read_fails_and_charges_nothing(lab: Lab, door: str) -> None:
    """A whole answer the door could not translate failed the call (502, the endpoint's failure) but charged its
    tenant the upstream's counts: a failed call settles to zero."""
    model = f"{lab.model}-unreadable"
    async with UnreadableAnswers(model) as upstream, only_endpoint(lab, model, "unreadable", upstream.url):
        request_id = f"unreadable-{uuid.uuid4().hex}"
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "route me well"}]}
        body.update({"max_tokens": 20} if door == "/v1/messages" else {"stream": False})
        reply = await served(lab, door, body, request_id)
        assert reply.status_code == 502, reply.text[:300]
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["outcome"] == "error" and usage["status"] == 502, usage
        assert (usage["input_tokens"], usage["output_tokens"]) == (0, 0), usage


@pytest.mark.parametrize("reported", [{"prompt_tokens": "7", "total_tokens": "7"}, {"prompt_tokens": -3}])
async def test_a_translated_embedding_shows_what_is_recorded_when_its_count_cannot_be_true(
        lab: Lab, reported: dict) -> None:
    """Ollama's /api/embed over an OpenAI upstream showed the upstream's prompt count as written (text, or
    negative) while the log recorded the gateway's estimate."""
    async with lying_endpoint(lab, "embedder", usage=reported, stream_usage=None) as model:
        request_id = f"embedder-{uuid.uuid4().hex}"
        reply = await served(lab, "/api/embed", {"model": model, "input": "route me well"}, request_id)
        assert reply.status_code == 200, reply.text[:300]
        assert reply.json()["embeddings"] == [[0.5, -0.25]]
        usage = await exactly_one_usage_row(lab.demo, request_id)
        assert usage["estimated"] is True and usage["input_tokens"] > 0, usage
        assert reply.json()["prompt_eval_count"] == usage["input_tokens"]


# --- a call that outlives its hold ---------------------------------------------------------------------------


async def test_a_call_longer_than_the_hold_keeps_its_hold_until_it_ends(lab: Lab, urls) -> None:
    """A hold lapses after SWITCHYARD_QUOTA_HOLD_S so that a dead gateway's holds free themselves; a stream that
    runs longer must keep its own, else its tokens are given back while it still spends them. With holds of 2 s, a
    6-second stream's hold is still there at 4 s; it is settled once the stream ends, to what the log says."""
    gateway = start_gateway(lab.demo, urls, workers="1", quota_hold_s="2")
    model, endpoint_id = f"{lab.model}-slow", f"slow-{lab.tag}"
    try:
        async with Simulator(SimConfig(models=(model,), tokens=24, token_interval_ms=250)) as slow:
            assert (await lab.admin("POST", "/models", {"model_id": model})).status_code == 201
            registered = await lab.admin("POST", "/endpoints", {
                "endpoint_id": endpoint_id, "provider_id": lab.ids["provider"], "base_url": slow.url,
                "models": [model], "priority": 10, "timeout_s": 30})
            assert registered.status_code == 201, registered.text
            tenant, key = await lab.tenant_with(daily_tokens=1_000_000)
            request_id = f"long-{uuid.uuid4().hex}"
            async with httpx.AsyncClient(timeout=60) as client:
                async def served() -> bool:
                    listed = await client.get(f"{gateway.url}/v1/models", headers=lab.headers(key))
                    return model in {m["id"] for m in listed.json()["data"]}
                await wait_for(served, 15, what="the gateway to serve the slow model")
                started = time.monotonic()
                call = asyncio.ensure_future(client.post(
                    f"{gateway.url}/v1/chat/completions", headers=lab.headers(key, request_id),
                    json={"model": model, "stream": True, "messages": [{"role": "user", "content": "take your time"}]}))
                await wait_for(lambda: _held(urls, request_id), 5, what="the call's hold")
                while time.monotonic() - started < 4.0:             # twice the hold's life, the stream still going
                    assert request_id in await holds(urls), f"the hold lapsed {time.monotonic() - started:.1f} s in"
                    assert not call.done()
                    await asyncio.sleep(0.2)
                reply = await call
            assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")
            assert time.monotonic() - started > 5.0
            event = await exactly_one_usage_row(lab.demo, request_id)
            await wait_for(lambda: _not_held(urls, request_id), 15, what="the hold settled from the log")
            tokens = await counters(urls, tenant)
            daily = [v for k, v in tokens.items() if k.endswith("/tok") and ":d:" in k]
            assert daily == [event["input_tokens"] + event["output_tokens"]], tokens
    finally:
        await lab.admin("DELETE", f"/endpoints/{endpoint_id}")
        stop_gateway(gateway)


async def _held(urls, request_id: str) -> bool:
    return request_id in await holds(urls)


async def _not_held(urls, request_id: str) -> bool:
    return request_id not in await holds(urls)
