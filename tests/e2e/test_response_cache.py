"""End to end: the response cache on a gateway started with SWITCHYARD_CACHE=all beside the demo's (cache off)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from tests.conftest import DemoStack, wait_for
from tests.e2e.test_demo import exactly_one_usage_row
from tests.e2e.test_quota_e2e import Gateway, admin, new_tenant, set_limits, start_gateway, stop_gateway

UPSTREAM_PATHS = ("/v1/embeddings", "/api/embed", "/api/embeddings", "/v1/chat/completions", "/api/chat")


@pytest.fixture(scope="module")
def cached_gateway(demo: DemoStack, urls) -> Iterator[Gateway]:
    gateway = start_gateway(demo, urls, cache="all", cache_ttl_s="60")
    yield gateway
    stop_gateway(gateway)


def upstream_calls(demo: DemoStack) -> int:
    """Inference requests every demo upstream has served so far (probes are not counted)."""
    config = httpx.get(f"{demo.url}/api/config", headers=admin(demo)).json()
    total = 0
    for endpoint in config["endpoints"]:
        stats = httpx.get(f"{endpoint['url'].rstrip('/')}/_sim/stats").json()
        total += sum(stats["requests"].get(path, 0) for path in UPSTREAM_PATHS)
    return total


def post(gateway: Gateway, path: str, key: str, body: dict, **headers: str) -> httpx.Response:
    request_id = uuid.uuid4().hex
    return httpx.post(f"{gateway.url}{path}", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {key}", "X-Request-Id": request_id, **headers})


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(w in match.group(1) for w in wanted):
            total += float(match.group(2))
    return total


async def test_a_repeated_embedding_is_answered_from_the_cache_and_metered_once_at_no_cost(
        demo: DemoStack, cached_gateway: Gateway) -> None:
    _, key = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": f"cache me {uuid.uuid4().hex}"}
    hits_before = metric(cached_gateway, "switchyard_cache_hits_total", api="openai.embeddings")
    embedding_hits_before = metric(cached_gateway, "embedding_cache_hits_total")

    first = post(cached_gateway, "/v1/embeddings", key, body)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss"
    first_event = await exactly_one_usage_row(demo, first.headers["x-request-id"])
    assert first_event["input_tokens"] > 0 and first_event["endpoint_id"] and not first_event["cache_hit"]

    calls = upstream_calls(demo)
    second = await _until_hit(cached_gateway, "/v1/embeddings", key, body)
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert upstream_calls(demo) == calls                       # no upstream was asked
    event = await exactly_one_usage_row(demo, second.headers["x-request-id"])
    assert event["cache_hit"] is True and event["outcome"] == "ok" and event["status"] == 200
    assert event["endpoint_id"] == "" and event["input_tokens"] == event["output_tokens"] == 0
    assert event["model"] == "nomic-embed-text"
    assert metric(cached_gateway, "switchyard_cache_hits_total", api="openai.embeddings") > hits_before
    assert metric(cached_gateway, "embedding_cache_hits_total") > embedding_hits_before


async def _until_hit(gateway: Gateway, path: str, key: str, body: dict, **headers: str) -> httpx.Response:
    """The first answer is kept in the background once sent: ask again until it is there (bounded)."""
    for _ in range(50):
        response = post(gateway, path, key, body, **headers)
        assert response.status_code == 200, response.text
        if response.headers["x-switchyard-cache"] == "hit":
            return response
        await asyncio.sleep(0.05)
    raise AssertionError("the answer never came from the cache")


async def test_answers_are_kept_per_tenant(demo: DemoStack, cached_gateway: Gateway) -> None:
    _, key_a = new_tenant(demo)
    _, key_b = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": f"tenant scoped {uuid.uuid4().hex}"}
    assert post(cached_gateway, "/v1/embeddings", key_a, body).headers["x-switchyard-cache"] == "miss"
    await _until_hit(cached_gateway, "/v1/embeddings", key_a, body)
    assert post(cached_gateway, "/v1/embeddings", key_b, body).headers["x-switchyard-cache"] == "miss"


async def test_cache_control_no_store_and_no_cache_are_honoured(demo: DemoStack, cached_gateway: Gateway) -> None:
    _, key = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": f"directives {uuid.uuid4().hex}"}
    first = post(cached_gateway, "/v1/embeddings", key, body, **{"Cache-Control": "no-store"})
    assert first.status_code == 200 and "x-switchyard-cache" not in first.headers
    assert post(cached_gateway, "/v1/embeddings", key, body).headers["x-switchyard-cache"] == "miss"
    await _until_hit(cached_gateway, "/v1/embeddings", key, body)
    calls = upstream_calls(demo)
    fresh = post(cached_gateway, "/v1/embeddings", key, body, **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-switchyard-cache"] == "miss" and upstream_calls(demo) == calls + 1


async def test_non_streamed_chat_is_cached_and_streamed_chat_never(demo: DemoStack, cached_gateway: Gateway) -> None:
    _, key = new_tenant(demo)
    body = {"model": "llama3.2", "max_tokens": 8, "messages": [{"role": "user", "content": uuid.uuid4().hex}]}
    assert post(cached_gateway, "/v1/chat/completions", key, body).headers["x-switchyard-cache"] == "miss"
    hit = await _until_hit(cached_gateway, "/v1/chat/completions", key, body)
    assert hit.json()["choices"][0]["message"]["content"]
    streamed = post(cached_gateway, "/v1/chat/completions", key, {**body, "stream": True})
    assert streamed.status_code == 200 and "x-switchyard-cache" not in streamed.headers
    assert streamed.text.rstrip().endswith("data: [DONE]")


async def test_the_ollama_door_keeps_its_own_answers(demo: DemoStack, cached_gateway: Gateway) -> None:
    _, key = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": f"ollama {uuid.uuid4().hex}"}
    first = post(cached_gateway, "/api/embed", key, body)
    assert first.status_code == 200 and first.headers["x-switchyard-cache"] == "miss"
    hit = await _until_hit(cached_gateway, "/api/embed", key, body)
    assert hit.json() == first.json() and "embeddings" in hit.json()
    openai_door = post(cached_gateway, "/v1/embeddings", key, body)
    assert openai_door.headers["x-switchyard-cache"] == "miss"      # another door, another answer shape


async def test_a_cache_hit_spends_no_quota(demo: DemoStack, urls, cached_gateway: Gateway) -> None:
    tenant, key = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": " ".join(["quota"] * 40)}
    assert post(cached_gateway, "/v1/embeddings", key, body).status_code == 200
    await _until_hit(cached_gateway, "/v1/embeddings", key, body)
    assert set_limits(demo, tenant, daily_tokens=1).status_code == 200          # no tokens left at all
    for _ in range(100):
        refused = post(cached_gateway, "/v1/embeddings", key, {**body, "input": "something new"})
        if refused.status_code == 402:
            break
        await asyncio.sleep(0.05)                  # until this gateway has folded the new limit
    assert refused.status_code == 402
    assert post(cached_gateway, "/v1/embeddings", key, body).headers["x-switchyard-cache"] == "hit"


async def test_answers_expire_after_the_ttl_and_the_demo_gateway_does_not_cache(
        demo: DemoStack, urls, cached_gateway: Gateway) -> None:
    tenant, key = new_tenant(demo)
    body = {"model": "nomic-embed-text", "input": f"ttl {uuid.uuid4().hex}"}
    post(cached_gateway, "/v1/embeddings", key, body)
    await _until_hit(cached_gateway, "/v1/embeddings", key, body)
    client = redis.from_url(urls.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"sy:c:demo:{tenant}:*")]
        assert len(keys) == 1
        assert 0 < await client.pttl(keys[0]) <= 60_000
    finally:
        await client.aclose()
    plain = httpx.post(f"{demo.url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})
    assert plain.status_code == 200 and "x-switchyard-cache" not in plain.headers
    assert json.loads(plain.content)["data"]


async def test_an_answer_cut_short_by_a_nearly_spent_quota_is_not_kept(demo: DemoStack, cached_gateway: Gateway) -> None:
    """With a few tokens left of a day, a question was answered with what was left; kept, that short answer would
    be served again tomorrow, with the day's tokens back. A call granted less than it asked is not cached; the
    same call with room to spare is."""
    tenant, key = new_tenant(demo)
    body = {"model": "llama3.2", "max_tokens": 200,
            "messages": [{"role": "user", "content": f"hi {uuid.uuid4().int % 100_000}"}]}
    assert set_limits(demo, tenant, daily_tokens=16).status_code == 200
    for _ in range(100):                          # until this gateway has folded the limit
        short = post(cached_gateway, "/v1/chat/completions", key, body)
        if short.status_code == 200 and short.json()["choices"][0]["finish_reason"] == "length":
            break
        await asyncio.sleep(0.05)
    assert short.status_code == 200 and short.json()["choices"][0]["finish_reason"] == "length", short.text
    assert short.headers["x-switchyard-cache"] == "miss"
    assert set_limits(demo, tenant, daily_tokens=None).status_code == 200
    for _ in range(100):                          # until this gateway has folded the change: a whole answer
        whole = post(cached_gateway, "/v1/chat/completions", key, body)
        assert whole.status_code == 200 and whole.headers["x-switchyard-cache"] == "miss", "the short answer was kept"
        if whole.json()["choices"][0]["finish_reason"] != "length":
            break
        await asyncio.sleep(0.05)
    hit = await _until_hit(cached_gateway, "/v1/chat/completions", key, body)
    assert hit.json()["choices"] == whole.json()["choices"]


async def test_cache_hits_count_toward_no_limit(demo: DemoStack, cached_gateway: Gateway) -> None:
    """A hit holds no quota and is never refused; its usage event still counted as a request, so hits used up the
    `monthly_requests` real calls needed (and the figure passed its limit: used 5 of 3)."""
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, monthly_requests=5).status_code == 200
    body = {"model": "nomic-embed-text", "input": f"counted once {uuid.uuid4().hex}"}
    seen = {"hit": 0, "miss": 0}
    for _ in range(100):                          # until the answer is kept, then six hits
        reply = post(cached_gateway, "/v1/embeddings", key, body)
        assert reply.status_code == 200, reply.text
        seen[reply.headers["x-switchyard-cache"]] += 1
        if seen["hit"] == 6:
            break
        if not seen["hit"]:
            await asyncio.sleep(0.05)
    assert seen["hit"] == 6 and seen["miss"] < 5, seen

    async def settled() -> bool:
        conn = await asyncpg.connect(demo.database_url)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM events WHERE type LIKE 'usage.recorded%' AND tenant = $1",
                                       tenant)
        finally:
            await conn.close()
        quotas = httpx.get(f"{demo.url}/api/v1/tenant-models/quotas?tenant_id={tenant}", headers=admin(demo)).json()
        used = next(q["used"] for q in quotas["quotas"] if q["quota_type"] == "requests")
        assert used <= seen["miss"], f"{used} requests counted for {seen['miss']} real calls and {seen['hit']} hits"
        return rows == 6 + seen["miss"] and used == seen["miss"]
    await wait_for(settled, 15, what="every call settled, the hits counted as no request")
    left = 5 - seen["miss"]
    fresh = [post(cached_gateway, "/v1/embeddings", key, {**body, "input": f"new {n}"}) for n in range(left + 1)]
    assert [r.status_code for r in fresh[:left]] == [200] * left and fresh[left].status_code in (402, 429), \
        [r.text for r in fresh]


async def test_an_answer_held_to_the_tenants_default_maximum_is_not_kept(demo: DemoStack,
                                                                          cached_gateway: Gateway) -> None:
    """A call naming no max_tokens is held to the tenant's `default_max_tokens`; kept, its 3-token answer outlived
    the setting. The same question naming its own maximum is kept."""
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=100_000, default_max_tokens=3).status_code == 200
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": f"hi {uuid.uuid4().hex}"}]}
    for _ in range(100):                          # until this gateway has folded the limits
        held = post(cached_gateway, "/v1/chat/completions", key, body)
        if held.status_code == 200 and held.json()["usage"]["completion_tokens"] == 3:
            break
        await asyncio.sleep(0.05)
    assert held.json()["choices"][0]["finish_reason"] == "length", held.text
    for _ in range(6):
        again = post(cached_gateway, "/v1/chat/completions", key, body)
        assert again.status_code == 200 and again.headers["x-switchyard-cache"] == "miss", "a held answer was kept"
        await asyncio.sleep(0.05)
    named = await _until_hit(cached_gateway, "/v1/chat/completions", key, {**body, "max_tokens": 3})
    assert named.json()["usage"]["completion_tokens"] == 3
