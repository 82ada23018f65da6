"""The monitoring API of `switchyard up --demo` in the seed's shapes: health, in-flight usage, statistics,
configuration, the live usage stream, the idempotent rollup, and Prometheus metrics on every service.
An operator sees everything; a tenant sees only its own."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from urllib.parse import quote

import httpx

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_quota_e2e import start_gateway, stop_gateway
from tests.e2e.test_usage_accounting import Account, account, admin  # noqa: F401 — `account` is a fixture


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def get(demo: DemoStack, path: str, key: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(f"{demo.url}{path}", headers=auth(key) if key else {})


async def post(demo: DemoStack, path: str, body: dict, key: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{demo.url}{path}", json=body, headers=auth(key))


async def test_health_turns_503_with_the_failing_endpoint_named_then_recovers(demo: DemoStack) -> None:
    tag = uuid.uuid4().hex[:8]
    async with Simulator(SimConfig(models=(f"h-{tag}",))) as sim:
        sim.configure(failure_kind="refuse", failure_rate=1.0)
        await admin(demo, "POST", "/providers", {"provider_id": f"h-{tag}", "kind": "openai-compatible"})
        await admin(demo, "POST", "/endpoints", {"endpoint_id": f"down-{tag}", "provider_id": f"h-{tag}",
                                                 "base_url": sim.url, "models": [f"h-{tag}"]})
        try:
            async def reported() -> httpx.Response | None:
                response = await get(demo, "/health", demo.admin_key)
                entry = response.json()["endpoints"].get(f"down-{tag}", {})
                return response if entry.get("status") == "error" else None

            response = await wait_for(reported, timeout_s=20, what="the refusing endpoint reported unhealthy")
            assert response.status_code == 503
            live = await get(demo, "/health/live")         # the gateway itself is fine: no restart wanted
            assert live.status_code == 200 and live.json()["checks"] == {"nats": True}
            report = response.json()
            assert report["status"] == "error" and report["endpoints"][f"down-{tag}"]["detail"]
            assert report["endpoints"][f"down-{tag}"]["url"] == sim.url
            assert {name: s["status"] for name, s in report["services"].items()} == {
                "gateway": "ok", "registry": "ok", "metering": "ok", "router": "ok", "quota": "ok"}
            anonymous = (await get(demo, "/health")).json()
            assert anonymous["endpoints"][f"down-{tag}"] == {"status": "error"}       # no detail, no URL
        finally:
            await admin(demo, "DELETE", f"/endpoints/{f'down-{tag}'}")
    response = await get(demo, "/health", demo.admin_key)
    report = response.json()
    assert f"down-{tag}" not in report["endpoints"]
    healthy = all(e["status"] != "error" for e in report["endpoints"].values()) and \
        all(s["status"] == "ok" for s in report["services"].values())
    assert response.status_code == (200 if healthy else 503) and report["status"] == ("ok" if healthy else "error")


async def test_usage_shows_calls_in_flight_per_endpoint_and_model_to_operators_only(account: Account) -> None:
    demo, endpoint = account.demo, f"acct-{account.tenant.split('-', 1)[1]}"
    account.sim.configure(latency_ms=1500)
    async with httpx.AsyncClient(timeout=10) as client:
        calls = [asyncio.create_task(client.post(f"{demo.url}/v1/chat/completions", headers=account.headers(
            uuid.uuid4().hex), json=account.chat_body(stream=False))) for _ in range(3)]

        async def three_in_flight() -> dict | None:
            body = (await get(demo, "/api/usage", demo.admin_key)).json()
            return body if body["usage_counts"].get(endpoint, {}).get(account.model) == 3 else None

        body = await wait_for(three_in_flight, timeout_s=5, what="three calls in flight")
        mine = (await get(demo, "/api/usage", account.key)).json()
        await asyncio.gather(*calls)
    assert set(body) == {"usage_counts", "token_usage_counts"}
    assert mine["usage_counts"] == {}
    assert set(mine["token_usage_counts"]) <= {endpoint}       # only its own tokens, on its own endpoint
    after = (await get(demo, "/api/usage", demo.admin_key)).json()
    assert after["usage_counts"][endpoint][account.model] == 0


async def test_stats_give_totals_time_series_and_endpoint_distribution_per_tenant(account: Account) -> None:
    demo = account.demo
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(4):
            reply = await client.post(f"{demo.url}/v1/chat/completions", headers=account.headers(uuid.uuid4().hex),
                                      json=account.chat_body(stream=False))
            assert reply.status_code == 200

    async def four_calls() -> dict | None:
        body = (await post(demo, "/api/stats", {"model": account.model}, account.key)).json()
        return body if body["calls"] == 4 else None

    stats = await wait_for(four_calls, timeout_s=15, what="four calls in the stats")
    assert stats["total_tokens"] == stats["input_tokens"] + stats["output_tokens"] > 0
    assert sum(p["total_tokens"] for p in stats["time_series"]) == stats["total_tokens"]
    assert {p["granularity"] for p in stats["time_series"]} == {"minute"}
    assert stats["endpoint_distribution"] == {stats["time_series"][0]["endpoint"]: stats["total_tokens"]}
    operator = (await post(demo, "/api/stats", {"model": account.model}, demo.admin_key)).json()
    assert operator["total_tokens"] == stats["total_tokens"]               # nobody else uses this model
    other_tenant = (await post(demo, "/api/stats", {"model": account.model}, demo.demo_key)).json()
    assert other_tenant["calls"] == 0 and other_tenant["time_series"] == []

    # Without a model, every model's figures together in one answer (the console's overview asks this once, not
    # once per model): the tenant's own, which used this model alone; an operator's cover every tenant.
    every = (await post(demo, "/api/stats", {}, account.key)).json()
    assert every["model"] == "" and every["calls"] == 4 and every["total_tokens"] == stats["total_tokens"]
    assert every["time_series"] == stats["time_series"] and every["cost_usd"] == stats["cost_usd"]
    everyone = (await post(demo, "/api/stats", {"since": 0}, demo.admin_key)).json()
    assert everyone["calls"] >= every["calls"] and everyone["total_tokens"] >= every["total_tokens"]
    assert (await post(demo, "/api/stats", {"tenant_id": account.tenant}, demo.admin_key)).json() == every

    # One tenant's figures: an operator may name any tenant, a member only its own.
    one = {"model": account.model, "tenant_id": account.tenant}
    assert (await post(demo, "/api/stats", one, demo.admin_key)).json()["total_tokens"] == stats["total_tokens"]
    assert (await post(demo, "/api/stats", one, account.key)).json()["total_tokens"] == stats["total_tokens"]
    demos = (await post(demo, "/api/stats", {**one, "tenant_id": "demo"}, demo.admin_key)).json()
    assert demos["calls"] == 0 and demos["time_series"] == []
    refused = await post(demo, "/api/stats", {**one, "tenant_id": "demo"}, account.key)
    assert refused.status_code == 403 and refused.json() == {"error": "Admin role required"}

    # Token counts too: an operator may ask for one tenant's, a member only for its own.
    counts = (await get(demo, f"/api/token_counts?tenant_id={account.tenant}", demo.admin_key)).json()
    assert counts == (await get(demo, "/api/token_counts", account.key)).json()
    assert [row["model"] for row in counts["breakdown"]] == [account.model]
    assert counts["total_tokens"] == stats["total_tokens"]
    assert (await get(demo, "/api/token_counts?tenant_id=demo", account.key)).status_code == 403


async def test_a_tenant_named_by_a_hostile_value_is_refused_naming_the_field(demo: DemoStack) -> None:
    """The tenant an operator names for figures reached metering's SQL as it was: a NUL (which PostgreSQL's text
    cannot hold) was a 500 with a traceback in metering's log."""
    for tenant in ("\x00", "t" * 300, "../demo", "DEMO"):
        counts = await get(demo, f"/api/token_counts?tenant_id={quote(tenant)}", demo.admin_key)
        stats = await post(demo, "/api/stats", {"tenant_id": tenant}, demo.admin_key)
        for answer in (counts, stats):
            assert answer.status_code == 400 and answer.json()["error"]["field"] == "tenant_id", (tenant, answer.text)


async def test_a_model_named_by_a_hostile_value_is_refused_naming_the_field(demo: DemoStack) -> None:
    """A member's `/api/stats` for the model "\x00" reached metering's SQL as it was: a 500 and a traceback."""
    for model in ("\x00", "m" * 1000, "a\u202eb", " llama3.2"):
        stats = await post(demo, "/api/stats", {"model": model}, demo.demo_key)
        assert stats.status_code == 400 and stats.json()["error"]["field"] == "model", (model, stats.text)
    assert (await post(demo, "/api/stats", {"model": "llama3.2"}, demo.demo_key)).status_code == 200


async def test_usage_stream_pushes_each_recorded_call_and_only_to_its_tenant(account: Account) -> None:
    demo = account.demo
    own, foreign = uuid.uuid4().hex, uuid.uuid4().hex
    seen: list[dict] = []

    async def watch(key: str, until: str) -> None:
        async with httpx.AsyncClient(timeout=30) as client, \
                client.stream("GET", f"{demo.url}/api/usage-stream", headers=auth(key)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    snapshot = json.loads(line[6:])
                    seen.append(snapshot)
                    if until in {r["request_id"] for r in snapshot["recorded"]}:
                        return

    watcher = asyncio.create_task(watch(account.key, own))
    await wait_for(lambda: seen, timeout_s=10, what="the first snapshot")
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(f"{demo.url}/v1/embeddings", headers={**auth(demo.demo_key), "X-Request-Id": foreign},
                          json={"model": "nomic-embed-text", "input": "someone else's call"})
        await client.post(f"{demo.url}/v1/chat/completions", headers=account.headers(own),
                          json=account.chat_body(stream=False))
    await asyncio.wait_for(watcher, 15)
    recorded = [r for snapshot in seen for r in snapshot["recorded"]]
    assert [r["request_id"] for r in recorded] == [own]
    assert recorded[0]["tenant_id"] == account.tenant and seen[-1]["usage_counts"] == {}
    last_tokens = seen[-1]["token_usage_counts"]
    assert sum(t for per_model in last_tokens.values() for t in per_model.values()) == \
        recorded[0]["input_tokens"] + recorded[0]["output_tokens"]


async def test_aggregating_time_series_days_twice_changes_nothing_and_needs_an_operator(demo: DemoStack) -> None:
    body = {"days": 400, "trim_old": True}            # older than any test data: the shared demo keeps its minutes
    first = await post(demo, "/api/aggregate_time_series_days", body, demo.admin_key)
    second = await post(demo, "/api/aggregate_time_series_days", body, demo.admin_key)
    assert first.status_code == second.status_code == 200
    assert second.json()["changed"] is False and second.json()["minute_rows_trimmed"] == 0
    assert second.json()["rolled_up_before"] == first.json()["rolled_up_before"]
    assert (await post(demo, "/api/aggregate_time_series_days", body, demo.demo_key)).status_code == 403
    bad = await post(demo, "/api/aggregate_time_series_days", {"days": -1}, demo.admin_key)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "days"


async def test_config_lists_endpoints_with_health_and_a_tenant_sees_only_its_models(demo: DemoStack) -> None:
    operator = (await get(demo, "/api/config", demo.admin_key)).json()["endpoints"]
    ollama = next(e for e in operator if e["id"] == "ollama-1")
    assert {"url", "status", "models", "priority", "max_concurrent"} <= set(ollama)
    assert not any("key" in field for e in operator for field in e)
    tag = uuid.uuid4().hex[:8]
    await admin(demo, "POST", "/tenants", {"tenant_id": f"narrow-{tag}", "all_models": False})
    await admin(demo, "POST", f"/tenants/narrow-{tag}/models", {"model_id": "nomic-embed-text"})
    key = (await admin(demo, "POST", f"/tenants/narrow-{tag}/keys", {"name": "narrow"}))["key"]
    mine = (await get(demo, "/api/config", key)).json()["endpoints"]
    assert mine and all(e["models"] == ["nomic-embed-text"] for e in mine)
    assert all("max_concurrent" not in e for e in mine)


async def test_every_service_serves_prometheus_metrics_and_its_own_health(demo: DemoStack) -> None:
    ports = dict(re.findall(r"(\w+) :(\d+)", demo.output().split("services:", 1)[1].split(";", 1)[0]))
    expected = {
        "gateway": ["switchyard_requests_total", "switchyard_gateway_overhead_seconds",
                    "switchyard_time_to_first_token_seconds", "embedding_requests_total",
                    "switchyard_inflight_calls_by_endpoint", "switchyard_circuit_state"],
        "metering": ["switchyard_consumer_pending_messages", "switchyard_follower_commit_seconds",
                     "switchyard_metered_tokens_total", "switchyard_cost_usd_total", "embedding_cost_usd_total"],
        "registry": ["process_cpu_seconds_total"], "router": ["process_cpu_seconds_total"],
        "quota": ["process_cpu_seconds_total"],
    }
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(f"{demo.url}/v1/embeddings", headers=auth(demo.demo_key),
                          json={"model": "nomic-embed-text", "input": "metered"})
        await client.post(f"{demo.url}/v1/chat/completions", headers=auth(demo.demo_key),
                          json={"model": "llama3.2", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        for name, names in expected.items():
            url = demo.url if name == "gateway" else f"http://127.0.0.1:{ports[name]}"

            async def exposes(url: str = url, names: list[str] = names) -> bool:
                text = (await client.get(f"{url}/metrics")).text
                return all(re.search(rf"^{n}(_bucket)?[{{ ]", text, re.M) for n in names)

            await wait_for(exposes, timeout_s=15, what=f"{name} metrics")
            assert (await client.get(f"{url}/health/live")).json()["service"] == name
            if name != "gateway":
                assert (await client.get(f"{url}/health")).status_code == 200


async def sign_in_user(demo: DemoStack, tenant: str, role: str) -> tuple[str, str]:
    """A new user of `tenant` with `role`, signed in: its name and access token."""
    username, password = f"watch{uuid.uuid4().hex[:10]}", "a passphrase for watching"
    await admin(demo, "POST", "/users", {"username": username, "password": password, "tenant_id": tenant,
                                          "role": role})
    async with httpx.AsyncClient(timeout=30) as client:
        signed = await client.post(f"{demo.url}/api/auth/login", json={"username": username, "password": password})
    assert signed.status_code == 200, signed.text
    return username, signed.json()["access_token"]


async def test_usage_stream_ends_once_its_caller_is_revoked_demoted_or_moved(account: Account) -> None:
    """The stream checks its caller before every push: a revoked key, or an operator made a member or moved to
    another tenant, sees no call recorded after the change (an ex-operator kept seeing every tenant's)."""
    demo = account.demo
    issued = await admin(demo, "POST", f"/tenants/{account.tenant}/keys", {"name": "watcher"})
    demoted_name, demoted = await sign_in_user(demo, "admin", "admin")
    moved_name, moved = await sign_in_user(demo, "admin", "admin")
    streams: dict[str, list[dict]] = {"revoked": [], "demoted": [], "moved": []}
    ended: dict[str, bool] = {}

    async def watch(name: str, key: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client, \
                client.stream("GET", f"{demo.url}/api/usage-stream", headers=auth(key)) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    streams[name].append(json.loads(line[6:]))
        ended[name] = True

    watchers = [asyncio.create_task(watch("revoked", issued["key"])), asyncio.create_task(watch("demoted", demoted)),
                asyncio.create_task(watch("moved", moved))]
    await wait_for(lambda: all(streams.values()), timeout_s=10, what="the first snapshots")
    async with httpx.AsyncClient(timeout=10) as client:
        before = uuid.uuid4().hex
        await client.post(f"{demo.url}/v1/chat/completions", headers=account.headers(before),
                          json=account.chat_body(stream=False))
        await wait_for(lambda: all(before in {r["request_id"] for s in shown for r in s["recorded"]}
                                   for shown in streams.values()), timeout_s=15, what="every stream to show a call")
        key_id = "_".join(issued["key"].split("_")[:2])
        assert (await client.delete(f"{demo.url}/api/admin/keys/{key_id}", headers=auth(demo.admin_key))) \
            .status_code == 200
        for username, change in ((demoted_name, {"role": "member"}), (moved_name, {"tenant_id": "demo"})):
            changed = await client.put(f"{demo.url}/api/admin/users/{username}", json=change,
                                       headers=auth(demo.admin_key))
            assert changed.status_code == 200, changed.text
        after = uuid.uuid4().hex
        await client.post(f"{demo.url}/v1/chat/completions", headers=account.headers(after),
                          json=account.chat_body(stream=False))
    await asyncio.wait(watchers, timeout=30)
    for watcher in watchers:
        watcher.cancel()
    assert ended == {"revoked": True, "demoted": True, "moved": True}
    for name, shown in streams.items():
        assert after not in {r["request_id"] for s in shown for r in s["recorded"]}, name


async def test_models_refusals_come_in_anthropics_shape_to_anthropics_clients(demo: DemoStack) -> None:
    """Anthropic's clients read /v1/models answers in Anthropic's shape, so its refusals too: otherwise the SDK
    finds no `error.type` and raises a bare APIStatusError without the message."""
    anthropic_client = {"anthropic-version": "2023-06-01"}
    cases = [
        ("/v1/models", {**anthropic_client, "x-api-key": "sy_wrong"}, 401, "authentication_error"),
        ("/v1/models", {**anthropic_client, "x-api-key": demo.demo_key, "x-tenant-id": "admin"}, 403,
         "permission_error"),
        ("/v1/models?limit=0", {**anthropic_client, "x-api-key": demo.demo_key}, 400, "invalid_request_error"),
        ("/v1/models?after_id=nowhere", {**anthropic_client, "x-api-key": demo.demo_key}, 400,
         "invalid_request_error"),
        ("/v1/models/claude-nowhere", {**anthropic_client, "x-api-key": demo.demo_key}, 404, "not_found_error"),
        ("/v1/models/llama3.2", {**anthropic_client, "authorization": "Bearer sy_wrong"}, 401,
         "authentication_error"),
    ]
    async with httpx.AsyncClient(base_url=demo.url, timeout=10) as client:
        for path, headers, status, kind in cases:
            refused = await client.get(path, headers=headers)
            assert refused.status_code == status, (path, refused.text)
            body = refused.json()
            assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"], (path, body)
        openai_client = await client.get("/v1/models/claude-nowhere", headers=auth(demo.demo_key))
    assert openai_client.status_code == 404 and openai_client.json()["error"]["code"] == "model_not_found"


def test_metrics_may_be_an_operators_alone(demo: DemoStack, urls) -> None:
    """/metrics names every model (a tenant's own too) and the calls in flight on each endpoint, which a member's
    views do not show; `SWITCHYARD_METRICS_AUTH=admin` keeps it, and its seed alias, to an admin key (a scraper
    sends it as a bearer token). The default leaves it open, as the demo's is."""
    assert httpx.get(f"{demo.url}/metrics").status_code == 200
    gateway = start_gateway(demo, urls, metrics_auth="admin", workers="1")
    try:
        for path in ("/metrics", "/api/v1/metrics/text"):
            anyone = httpx.get(f"{gateway.url}{path}")
            member = httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {demo.demo_key}"})
            operator = httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {demo.admin_key}"})
            assert (anyone.status_code, member.status_code, operator.status_code) == (401, 403, 200), path
            assert "switchyard_" not in anyone.text + member.text and "switchyard_requests_total" in operator.text
            assert anyone.json()["error"]["code"] == "INVALID_TOKEN"
    finally:
        stop_gateway(gateway)
