"""End to end: limits, views, keys and JWTs on the demo stack, with a second gateway process beside its own.

Reservations are driven two ways: straight through `QuotaClient` instances (two of them, as two
gateways would) with real calls to the simulator and real usage events settled by the demo's quota
service; and through the gateways' HTTP port, which needs the proxy to call `reserve` (xfail until then).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from collections.abc import Iterator

import asyncpg
import httpx

from switchyard_gateway.simulator import SimConfig, Simulator
import jwt
import msgspec
import pytest
import redis.asyncio as redis

from switchyard_gateway.contracts.events import UsageRecorded, new_id
from switchyard_gateway.kit import natsio
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.quotas.ledger import PROJECTION_TYPES, hold_name
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient, QuotaExceeded, RateLimited
from switchyard_gateway.services.gateway.pipeline.journal import Journal
from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher
from switchyard_gateway.services.gateway.translate.asks import read_request
from tests.conftest import REPO, DemoStack, traversable_tempdir, wait_for

JWT_SECRET = "e2e-jwt-secret-with-at-least-32-bytes"
PREFIX = "sy:q:demo:"                      # the demo's database is "demo"
PROMPT = " ".join(["quota"] * 60)          # 60 simulator tokens, about as many for tiktoken


class Gateway:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log_path: Path | None = None) -> None:
        self.url, self.proc, self.log_path = url, proc, log_path


def start_gateway(demo: DemoStack, urls, **env: str) -> Gateway:
    """Another gateway process on the demo's NATS and Valkey, with extra SWITCHYARD_* settings."""
    root = traversable_tempdir("switchyard-gw-")
    port = pick_free_port(set())
    full = {**os.environ, "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_REDIS_URL": urls.redis_url,
            "SWITCHYARD_DATABASE_URL": demo.database_url, "SWITCHYARD_PORT": str(port),
            "SWITCHYARD_SPOOL_DIR": str(root / "spool"), "SWITCHYARD_INSTANCE": f"gw{port}",
            **{f"SWITCHYARD_{k.upper()}": v for k, v in env.items()}}
    with open(root / "gateway.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.services.gateway"], env=full, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)      # any answer: started (503 = some endpoint is down)
            return Gateway(url, proc, root / "gateway.log")
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("gateway did not start:\n" + (root / "gateway.log").read_text())
        time.sleep(0.2)   # polling the new process's /health, under a deadline


def stop_gateway(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGTERM)
    try:
        gateway.proc.wait(20)
    except subprocess.TimeoutExpired:
        gateway.proc.kill()


@pytest.fixture(scope="module")
def second_gateway(demo: DemoStack, urls) -> Iterator[Gateway]:
    """A second gateway beside the demo's, with JWTs enabled."""
    gateway = start_gateway(demo, urls, jwt_secret=JWT_SECRET)
    yield gateway
    stop_gateway(gateway)


def admin(demo: DemoStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {demo.admin_key}"}


def new_tenant(demo: DemoStack, **settings: object) -> tuple[str, str]:
    """A fresh tenant and a member key of it."""
    tenant = f"q-{uuid.uuid4().hex[:10]}"
    r = httpx.post(f"{demo.url}/api/admin/tenants", json={"tenant_id": tenant, **settings}, headers=admin(demo))
    assert r.status_code == 201, r.text
    r = httpx.post(f"{demo.url}/api/admin/tenants/{tenant}/keys", json={"role": "member"}, headers=admin(demo))
    assert r.status_code == 201, r.text
    return tenant, r.json()["key"]


def set_limits(demo: DemoStack, tenant: str, model: str | None = None, **limits: object) -> httpx.Response:
    path = f"/api/admin/tenants/{tenant}/limits" if model is None else \
        f"/api/admin/tenants/{tenant}/models/{model}/limits"
    return httpx.put(f"{demo.url}{path}", json=limits, headers=admin(demo))


async def log_usage(demo: DemoStack, tenant: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(demo.database_url)
    try:
        return await conn.fetch("SELECT position, (payload->>'input_tokens')::int + (payload->>'output_tokens')::int"
                                " AS tokens, payload->>'request_id' AS request_id FROM events"
                                " WHERE type = 'usage.recorded.v2' AND tenant = $1", tenant)
    finally:
        await conn.close()


async def settled(demo: DemoStack, urls, tenant: str, calls: int) -> tuple[int, dict[str, int]]:
    """Wait until the log holds `calls` usage events of the tenant and the quota projection passed them;
    return the log's token sum and the tenant's day counter."""
    rows = await wait_for(lambda: _at_least(log_usage(demo, tenant), calls), timeout_s=30, what="usage in the log")
    last = max(r["position"] for r in rows)
    client = redis.from_url(urls.redis_url)
    try:
        await wait_for(lambda: _checkpoint_past(client, last), timeout_s=30, what="quota settlement")
        keys = [k async for k in client.scan_iter(match=f"{PREFIX}c:{tenant}:d:*")]
        counter = {k.decode(): int(v) for k, v in (await client.hgetall(keys[0])).items()} if keys else {}
    finally:
        await client.aclose()
    return sum(r["tokens"] for r in rows), counter


async def _at_least(rows_coro, n: int):
    rows = await rows_coro
    return rows if len(rows) >= n else None


async def _checkpoint_past(client: redis.Redis, position: int) -> bool:
    return int(await client.get(f"{PREFIX}checkpoint") or 0) >= position


# --- limits administration ----------------------------------------------------------------------


async def test_limits_are_set_by_an_admin_as_an_event_and_refused_to_members(demo: DemoStack) -> None:
    tenant, member = new_tenant(demo)
    r = set_limits(demo, tenant, daily_tokens=5000, rpm=60, budget_usd=2.5, budget_period="week",
                   timezone="Europe/Paris")
    assert r.status_code == 200, r.text
    assert r.json()["changed"] is True
    assert r.json()["limits"] | {} == {**r.json()["limits"], "daily_tokens": 5000, "rpm": 60, "budget_usd": 2.5,
                                       "budget_period": "week", "timezone": "Europe/Paris"}
    r = set_limits(demo, tenant, rpm=None)
    assert r.json()["limits"]["rpm"] is None and r.json()["limits"]["daily_tokens"] == 5000
    conn = await asyncpg.connect(demo.database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'limits.set.v1' AND tenant = $1", tenant)
    finally:
        await conn.close()
    assert count == 2
    refused = httpx.put(f"{demo.url}/api/admin/tenants/{tenant}/limits", json={"daily_tokens": 1},
                        headers={"Authorization": f"Bearer {member}"})
    assert refused.status_code == 403
    assert refused.json() == {"error": {"code": "FORBIDDEN", "message": "Admin role required"}}
    anonymous = httpx.put(f"{demo.url}/api/admin/tenants/{tenant}/limits", json={"daily_tokens": 1})
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": {"code": "INVALID_TOKEN", "message": "Invalid or expired token"}}


def test_model_limits_route_validates_model_and_fields(demo: DemoStack) -> None:
    tenant, _ = new_tenant(demo)
    ok = set_limits(demo, tenant, "llama3.2:latest", monthly_tokens=100)
    assert ok.status_code == 200 and ok.json()["model_id"] == "llama3.2"
    assert set_limits(demo, tenant, "no-such-model", monthly_tokens=1).status_code == 404
    bad = set_limits(demo, tenant, "llama3.2", timezone="Europe/Paris")
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "timezone"
    typo = set_limits(demo, tenant, daily_token=5)
    assert typo.status_code == 400
    limits = httpx.get(f"{demo.url}/api/admin/tenants/{tenant}/limits", headers=admin(demo)).json()
    assert limits["models"]["llama3.2"]["monthly_tokens"] == 100


# --- views and tenant isolation -----------------------------------------------------------------


async def test_views_show_a_tenant_its_own_figures_and_an_admin_any(demo: DemoStack, urls) -> None:
    alpha, alpha_key = new_tenant(demo)
    beta, beta_key = new_tenant(demo)
    assigned = httpx.post(f"{demo.url}/api/admin/tenants/{alpha}/models", headers=admin(demo),
                          json={"model_id": "llama3.2", "input_price_per_1m": 3.0, "output_price_per_1m": 5.0})
    assert assigned.status_code == 201, assigned.text
    assert set_limits(demo, alpha, daily_tokens=100_000).status_code == 200
    for key in (alpha_key, alpha_key, beta_key):
        r = httpx.post(f"{demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "llama3.2", "messages": [{"role": "user", "content": "three word prompt"}]})
        assert r.status_code == 200, r.text
    log_tokens, counter = await settled(demo, urls, alpha, 2)
    as_alpha = {"Authorization": f"Bearer {alpha_key}"}
    usage = httpx.get(f"{demo.url}/api/v1/tenant-models/usage", params={"period": "day"}, headers=as_alpha).json()
    assert usage["tenant_id"] == alpha and usage["usage"]["total_tokens"] == log_tokens == counter["tok"]
    assert usage["usage"]["requests"] == 2 and [m["model_id"] for m in usage["models"]] == ["llama3.2"]
    assert usage["usage"]["cost_usd"] == pytest.approx((counter["in"] * 3.0 + counter["out"] * 5.0) / 1e6)
    for period in ("week", "month"):
        wider = httpx.get(f"{demo.url}/api/v1/tenant-models/usage", params={"period": period}, headers=as_alpha)
        assert wider.json()["usage"]["total_tokens"] == log_tokens
    quotas = httpx.get(f"{demo.url}/api/v1/tenant-models/quotas", headers=as_alpha).json()
    assert [(q["quota_type"], q["limit"], q["used"]) for q in quotas["quotas"]] == [("daily", 100_000, log_tokens)]
    other = httpx.get(f"{demo.url}/api/v1/tenant-models/usage", params={"tenant_id": beta}, headers=as_alpha)
    assert other.status_code == 403 and other.json() == {"error": "Admin role required"}
    other = httpx.get(f"{demo.url}/api/v1/tenant-models/quotas", params={"tenant_id": beta}, headers=as_alpha)
    assert other.status_code == 403
    beta_view = httpx.get(f"{demo.url}/api/v1/tenant-models/usage", params={"tenant_id": beta}, headers=admin(demo))
    assert beta_view.status_code == 200 and beta_view.json()["tenant_id"] == beta
    bad = httpx.get(f"{demo.url}/api/v1/tenant-models/usage", params={"period": "year"}, headers=as_alpha)
    assert bad.status_code == 400


# --- keys and JWTs across gateways ----------------------------------------------------------------


def test_revoked_key_stops_working_on_every_gateway_within_a_second(demo: DemoStack, second_gateway: Gateway) -> None:
    tenant, key = new_tenant(demo)
    headers = {"Authorization": f"Bearer {key}"}
    for url in (demo.url, second_gateway.url):
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200
    key_id = "_".join(key.split("_")[:2])
    revoked = httpx.delete(f"{demo.url}/api/admin/keys/{key_id}", headers=admin(demo))
    assert revoked.status_code == 200
    started = time.monotonic()
    pending = {demo.url, second_gateway.url}
    while pending and time.monotonic() - started < 1.0:
        pending = {u for u in pending if httpx.get(f"{u}/v1/models", headers=headers).status_code != 401}
    assert not pending, f"still accepted after 1 s by {pending}"


def token(secret: str = JWT_SECRET, **claims: object) -> str:
    base = {"iss": "switchyard", "tenant": "demo", "role": "member", "sub": "e2e", "exp": int(time.time()) + 60}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256")


def test_jwt_bearer_tokens_on_a_gateway_with_a_secret(second_gateway: Gateway) -> None:
    url = second_gateway.url

    def get(path: str, value: str) -> httpx.Response:
        return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {value}"})

    assert get("/v1/models", token()).status_code == 200
    assert get("/api/admin/tenants", token(role="admin", tenant="admin")).status_code == 200
    wrong = token(secret="some-other-secret-of-enough-length!", role="admin")
    expired = token(role="admin", exp=int(time.time()) - 5)
    for refused in (wrong, expired):
        r = get("/api/admin/tenants", refused)
        assert r.status_code == 401
        assert r.json() == {"error": {"code": "INVALID_TOKEN", "message": "Invalid or expired token"}}
    member = get("/api/admin/tenants", token())
    assert member.status_code == 403
    assert member.json() == {"error": {"code": "FORBIDDEN", "message": "Admin role required"}}


def test_single_user_mode_accepts_only_its_one_key(demo: DemoStack, urls) -> None:
    gateway = start_gateway(demo, urls, auth_mode="single-user", api_key="single-user-key-0123456789")
    try:
        ok = httpx.get(f"{gateway.url}/api/admin/tenants", headers={"X-API-Key": "single-user-key-0123456789"})
        assert ok.status_code == 200
        for key in (demo.demo_key, demo.admin_key):
            refused = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    finally:
        stop_gateway(gateway)


# --- reservations: two instances, real calls, real settlement ----------------------------------


class Instances:
    """Two QuotaClients (as two gateways hold them) with the gateway's own catalog feed and usage publisher."""

    def __init__(self, nc, clients: list[QuotaClient], state: LocalState, publisher: UsagePublisher,
                 upstream: str) -> None:
        self.nc, self.clients, self.state, self.publisher = nc, clients, state, publisher
        self.upstream = upstream          # the simulator the demo routes llama3.2 to first


@pytest.fixture
async def instances(demo: DemoStack, urls) -> Instances:
    nc = await natsio.connect(urls.nats_url, "quota-e2e", 10)
    state = LocalState()
    await state.start(nc, 10)
    # 200 calls at once in this one process keep its loop busy for a second or more: wait for Valkey
    # rather than fail open, which is what this fixture's tests are not about.
    settings = Settings(nats_url=urls.nats_url, redis_url=urls.redis_url, database_url=demo.database_url,
                        quota_timeout_s=30.0)
    clients = [await QuotaClient.start(nc, settings, state.catalog, Fallbacks(state.catalog)) for _ in range(2)]
    publisher = UsagePublisher(nc, Journal(traversable_tempdir("switchyard-quota-spool-"), "quota-e2e"))
    await publisher.open()
    task = asyncio.ensure_future(publisher.run())
    yield Instances(nc, clients, state, publisher, demo.endpoint_url("ollama-1"))
    await publisher.drain()
    task.cancel()
    for client in clients:
        await client.close()
    await nc.close()


async def wait_known(instances: Instances, tenant: str, *limits: str) -> None:
    """Every instance sees the tenant in its catalog and its limits in its book."""
    await wait_for(lambda: tenant in instances.state.catalog.tenants, what="tenant in the catalog")
    for client in instances.clients:
        await wait_for(lambda: client.book.applicable(tenant, "llama3.2") is not None, what="limits in the book")


async def call_through(instances: Instances, http: httpx.AsyncClient, tenant: str, i: int,
                       max_tokens: int = 16) -> tuple[str, int]:
    """Reserve on instance i % 2, call the simulator, publish the usage event: what a gateway does."""
    key = next(k for k in instances.state.catalog.keys.values() if k.tenant_id == tenant)
    model = instances.state.catalog.models["llama3.2"]
    request_id, event_id = uuid.uuid4().hex, new_id()
    body = {"model": "llama3.2", "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}]}
    client = instances.clients[i % 2]
    ask = read_request("openai.chat", msgspec.json.encode(body)).ask(100_000, client.estimator)
    try:
        held = await client.reserve(hold=hold_name(request_id, event_id), key=key, model=model, ask=ask)
    except (QuotaExceeded, RateLimited) as exc:
        return type(exc).__name__, 0
    if held is not None and held.ceiling is not None:
        body["max_tokens"] = held.ceiling          # what the proxy sends upstream
    reply = (await http.post(f"{instances.upstream}/v1/chat/completions", json=body)).json()
    instances.publisher.record(UsageRecorded(
        event_id=event_id, request_id=request_id, tenant_id=tenant, key_id=key.key_id, model="llama3.2", api="openai.chat",
        outcome="ok", status=200, input_tokens=reply["usage"]["prompt_tokens"],
        output_tokens=reply["usage"]["completion_tokens"], endpoint_id="ollama-1", upstream_model="llama3.2"))
    return "ok", reply["usage"]["total_tokens"]


async def test_200_concurrent_calls_on_two_instances_stay_within_a_daily_quota(
        demo: DemoStack, urls, instances: Instances) -> None:
    tenant, _ = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=10_000).status_code == 200
    await wait_known(instances, tenant)
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=50)) as http:
        results = await asyncio.gather(*(call_through(instances, http, tenant, i) for i in range(200)))
    answered = [tokens for outcome, tokens in results if outcome == "ok"]
    assert sum(1 for outcome, _ in results if outcome == "QuotaExceeded") > 0
    log_tokens, counter = await settled(demo, urls, tenant, len(answered))
    assert log_tokens == sum(answered) <= 10_000
    assert counter["tok"] == counter["in"] + counter["out"] == log_tokens     # every hold settled


async def test_rpm_limit_holds_across_two_instances(demo: DemoStack, instances: Instances) -> None:
    tenant, _ = new_tenant(demo)
    assert set_limits(demo, tenant, rpm=10).status_code == 200
    await wait_known(instances, tenant)
    if time.time() % 60 > 55:                        # keep all 30 calls inside one minute window
        await asyncio.sleep(60 - time.time() % 60 + 0.1)
    async with httpx.AsyncClient(timeout=10) as http:
        results = await asyncio.gather(*(call_through(instances, http, tenant, i) for i in range(30)))
    outcomes = [outcome for outcome, _ in results]
    assert outcomes.count("ok") == 10 and outcomes.count("RateLimited") == 20


async def test_usd_budget_uses_the_tenant_price_from_the_registry(demo: DemoStack, urls, instances: Instances) -> None:
    tenant, _ = new_tenant(demo)
    assigned = httpx.post(f"{demo.url}/api/admin/tenants/{tenant}/models", headers=admin(demo),
                          json={"model_id": "llama3.2", "input_price_per_1m": 1000.0, "output_price_per_1m": 2000.0})
    assert assigned.status_code == 201, assigned.text
    assert set_limits(demo, tenant, budget_usd=0.5, budget_period="day").status_code == 200
    await wait_known(instances, tenant)
    await wait_for(lambda: tenant in instances.state.catalog.assignments, what="assignment in the catalog")
    async with httpx.AsyncClient(timeout=10) as http:
        results = [await call_through(instances, http, tenant, i) for i in range(12)]
    answered = sum(1 for outcome, _ in results if outcome == "ok")
    assert 0 < answered < 12 and results[-1][0] == "QuotaExceeded"
    _, counter = await settled(demo, urls, tenant, answered)
    # each call: 60 prompt tokens at 1000 USD/1M and 16 output tokens at 2000 USD/1M = 0.092 USD
    assert counter["usd"] == answered * (60 * 1_000_000 + 16 * 2_000_000) <= 500_000_000


def test_replay_quota_rebuilds_counters_equal_to_the_live_ones(demo: DemoStack, urls) -> None:
    async def snapshot() -> dict:
        client = redis.from_url(urls.redis_url)
        try:
            conn = await asyncpg.connect(demo.database_url)
            try:
                last = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events WHERE type = ANY($1)",
                                           list(PROJECTION_TYPES))
            finally:
                await conn.close()
            await wait_for(lambda: _checkpoint_past(client, last), timeout_s=30, what="quota settlement")
            return {k: await client.hgetall(k) async for k in client.scan_iter(match=f"{PREFIX}c:*")}
        finally:
            await client.aclose()

    from tests.conftest import run_sync
    live = run_sync(snapshot())
    assert live, "earlier tests left counters to rebuild"
    env = {**os.environ, "SWITCHYARD_DATABASE_URL": demo.database_url, "SWITCHYARD_REDIS_URL": urls.redis_url}
    done = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "replay", "quota"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "quota: rebuilt from" in done.stdout
    assert run_sync(snapshot()) == live


# --- the same through the gateways' HTTP port (needs the proxy to reserve) ---------------------



async def _post(http: httpx.AsyncClient, url: str, key: str, max_tokens: int = 16) -> httpx.Response:
    return await http.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                           json={"model": "llama3.2", "max_tokens": max_tokens,
                                 "messages": [{"role": "user", "content": PROMPT}]})


async def test_gateways_enforce_a_daily_quota_over_200_concurrent_calls(
        demo: DemoStack, urls, second_gateway: Gateway) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=10_000).status_code == 200
    async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64)) as http:
        replies = await asyncio.gather(*(_post(http, (demo.url, second_gateway.url)[i % 2], key)
                                         for i in range(200)))
    refused = [r for r in replies if r.status_code == 402]
    assert refused, "the quota was never reached"
    body = refused[0].json()["error"]          # OpenAI's error object, the seed's detail fields inside it
    assert set(body) == {"message", "type", "param", "code", "quota_type", "limit", "used", "reset_time",
                         "suggested_models"}
    assert body["message"] == "Quota exceeded" and body["type"] == "insufficient_quota"
    assert body["quota_type"] == "daily" and body["limit"] == 10_000
    answered = sum(1 for r in replies if r.status_code == 200)
    log_tokens, counter = await settled(demo, urls, tenant, answered)
    assert log_tokens <= 10_000
    assert counter["tok"] == log_tokens


async def test_gateways_answer_429_with_rate_limit_headers(demo: DemoStack, second_gateway: Gateway) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, rpm=4).status_code == 200
    async with httpx.AsyncClient(timeout=15) as http:
        replies = [await _post(http, (demo.url, second_gateway.url)[i % 2], key) for i in range(6)]
    limited = [r for r in replies if r.status_code == 429]
    assert len(limited) == 2
    headers = limited[0].headers
    assert headers["x-ratelimit-limit"] == "4" and headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60 and int(headers["x-ratelimit-reset"]) % 60 == 0
    assert limited[0].json()["error"]["message"] == "Rate limit exceeded"
    assert limited[0].json()["error"]["code"] == "rate_limit_exceeded"


async def test_gateways_refuse_over_budget_with_prices_from_the_registry(demo: DemoStack) -> None:
    tenant, key = new_tenant(demo)
    httpx.post(f"{demo.url}/api/admin/tenants/{tenant}/models", headers=admin(demo),
               json={"model_id": "llama3.2", "input_price_per_1m": 1000.0, "output_price_per_1m": 2000.0})
    assert set_limits(demo, tenant, budget_usd=0.2).status_code == 200
    async with httpx.AsyncClient(timeout=15) as http:
        replies = [await _post(http, demo.url, key) for _ in range(5)]
    assert [r.status_code for r in replies][:2] == [200, 200] and replies[-1].status_code == 402
    assert replies[-1].json()["error"]["quota_type"] == "budget" and replies[-1].json()["error"]["limit"] == 0.2


async def test_fallback_on_quota_serves_the_next_model_and_names_it(demo: DemoStack) -> None:
    tenant, key = new_tenant(demo, fallback_on_quota=True)
    fallback = f"{tenant}-small"
    async with Simulator(SimConfig(models=(fallback,), tokens=2)) as sim:
        for path, body in (("/providers", {"provider_id": f"{tenant}-p", "kind": "openai-compatible"}),
                           ("/models", {"model_id": fallback, "kind": "chat"}),
                           ("/endpoints", {"endpoint_id": f"{tenant}-e", "provider_id": f"{tenant}-p",
                                           "base_url": sim.url, "models": [fallback]}),
                           (f"/tenants/{tenant}/models", {"model_id": "llama3.2", "fallback_model": fallback})):
            assert httpx.post(f"{demo.url}/api/admin{path}", headers=admin(demo), json=body).status_code == 201
        try:
            assert set_limits(demo, tenant, "llama3.2", daily_tokens=10).status_code == 200
            async with httpx.AsyncClient(timeout=15) as http:
                reply = await _post(http, demo.url, key)
        finally:
            httpx.delete(f"{demo.url}/api/admin/endpoints/{tenant}-e", headers=admin(demo))
    assert reply.status_code == 200
    assert reply.headers.get("x-switchyard-model") == fallback
    assert sim.stats.requests.get("/v1/chat/completions") == 1


async def test_the_hold_keeper_outlives_valkey_being_away_and_stops_with_the_call(demo: DemoStack, urls,
                                                                                   instances: Instances) -> None:
    """The keeper extends a running call's hold; Valkey away for two of its turns costs a warning, not the keeper;
    once the call is finished its hold is no longer extended."""
    from switchyard_gateway.resp import Valkey

    tenant, _ = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=1_000_000).status_code == 200
    await wait_known(instances, tenant)
    settings = Settings(nats_url=urls.nats_url, redis_url=urls.redis_url, database_url=demo.database_url,
                        quota_hold_s=2.0)
    client = await QuotaClient.start(instances.nc, settings, instances.state.catalog, Fallbacks(instances.state.catalog))
    probe = redis.from_url(urls.redis_url)
    try:
        key = next(k for k in instances.state.catalog.keys.values() if k.tenant_id == tenant)
        ask = read_request("openai.chat", msgspec.json.encode(
            {"model": "llama3.2", "max_tokens": 8, "messages": [{"role": "user", "content": PROMPT}]})).ask(
            100_000, client.estimator)
        hold = hold_name(uuid.uuid4().hex, new_id())
        reservation = await client.reserve(hold=hold, key=key, model=instances.state.catalog.models["llama3.2"],
                                           ask=ask)
        assert reservation is not None and reservation.held
        first = await probe.zscore(client.keys.holds, hold)
        real, client.valkey = client.valkey, Valkey(f"redis://127.0.0.1:{pick_free_port(set())}")   # nothing there
        await asyncio.sleep(1.2)                       # two of the keeper's turns (every 0.5 s) fail
        assert await probe.zscore(client.keys.holds, hold) == first
        away, client.valkey = client.valkey, real
        await away.close()

        async def extended() -> bool:
            return (await probe.zscore(client.keys.holds, hold) or 0) > first
        await wait_for(extended, 3, what="the keeper to extend the hold again")
        assert client._keeper is not None and not client._keeper.done()
        client.finished(reservation)
        last = await probe.zscore(client.keys.holds, hold)
        await asyncio.sleep(1.2)
        assert await probe.zscore(client.keys.holds, hold) == last     # a finished call's hold is left to settle
        assert await probe.zscore(client.keys.holds, hold) < (time.time() + 2.0) * 1000
        client.release(reservation, 0, 0, 0)
    finally:
        await client.close()
        await probe.aclose()
