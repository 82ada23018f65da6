"""Reservations in a real Valkey, settled from a real event log: holds, ceilings, refusals, settlement, expiry,
release, rebuild, and what happens when Valkey is away or a script fails."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import pytest
import redis.asyncio as redis

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts.events import (
    EndpointRegistered, KeyIssued, ModelRegistered, TenantCreated, TenantModelAssigned, TenantRemoved, UsageRecorded,
)
from switchyard_gateway.contracts.quota import Limits, LimitsSet
from switchyard_gateway.events import LogFollower
from switchyard_gateway.kit import eventlog
from switchyard_gateway.quotas.ledger import hold_name
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.resp import Valkey
from switchyard_gateway.quotas.scripts import EXPIRE_SCRIPT
from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.reserve import (
    LimitsFeed, QuotaClient, QuotaExceeded, QuotaUnavailable, RateLimited,
)
from switchyard_gateway.services.gateway.translate.asks import Ask, read_request
from switchyard_gateway.services.quota.counters import Counters, ValkeyLead, rebuild
from tests.conftest import wait_for

TENANT, OTHER = "acme", "globex"
KEY = KeyIssued(key_id="sy_k1", tenant_id=TENANT, key_sha256="0" * 64)
KEY2 = KeyIssued(key_id="sy_k2", tenant_id=TENANT, key_sha256="1" * 64)
CHAT = ModelRegistered(model_id="llama3.2", input_price_per_1m=2.0, output_price_per_1m=4.0, fallback_model="mini")
MINI = ModelRegistered(model_id="mini", input_price_per_1m=0.5, output_price_per_1m=1.0)
ESTIMATOR = TokenEstimator()


PROMPT = 3 + 3 + 2                   # "hello there" as one chat message, counted with cl100k


def body(max_tokens: int | None = 100, text: str = "hello there", **more: object) -> Ask:
    fields = {"model": "llama3.2", "messages": [{"role": "user", "content": text}], **more}
    if max_tokens is not None:
        fields["max_tokens"] = max_tokens
    return read_request("openai.chat", msgspec.json.encode(fields)).ask(100_000, ESTIMATOR)


def registry_events() -> list:
    return [CHAT, MINI, TenantCreated(tenant_id=TENANT), TenantCreated(tenant_id=OTHER),
            EndpointRegistered(endpoint_id="ep-1", provider_id="p", base_url="http://127.0.0.1:9",
                               models=("llama3.2", "mini")),
            TenantModelAssigned(tenant_id=TENANT, model_id="llama3.2", input_price_per_1m=1.0)]


@pytest.fixture
def keys() -> Keys:
    return Keys(f"t{uuid.uuid4().hex[:10]}:")


@pytest.fixture
async def client(urls) -> redis.Redis:
    client = redis.from_url(urls.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def valkey(urls) -> Valkey:
    valkey = Valkey(urls.redis_url)
    yield valkey
    await valkey.close()


def counters(pool, valkey: Valkey, keys: Keys) -> LogFollower:
    """The quota service's counter projection, stepped by hand."""
    return LogFollower(pool, Counters(pool, valkey, keys))


def quota_client(urls, keys: Keys, limits: list[LimitsSet], hold_s: float = 600.0, redis_url: str | None = None,
                 on_error: str = "open") -> QuotaClient:
    catalog = Catalog()
    for event in registry_events():
        catalog.apply(event)
    feed = LimitsFeed()
    for event in limits:
        feed.book.apply(event)
    return QuotaClient(catalog, Fallbacks(catalog), feed, Valkey(redis_url or urls.redis_url), keys, ESTIMATOR,
                       hold_s, on_error=on_error)


async def record(pool, events: list) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, events)


def event_id(request_id: str) -> uuid.UUID:
    """The usage event id of the call a test names by its request id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, request_id)


def hold(request_id: str) -> str:
    """The hold of that call, as the gateway names it."""
    return hold_name(request_id, event_id(request_id))


def usage(request_id: str, input_tokens: int, output_tokens: int, outcome: str = "ok", tenant: str = TENANT,
          model: str = "llama3.2") -> UsageRecorded:
    return UsageRecorded(event_id=event_id(request_id), request_id=request_id, tenant_id=tenant, key_id=KEY.key_id,
                         model=model,
                         api="openai.chat", outcome=outcome, status=200 if outcome == "ok" else 502,
                         input_tokens=input_tokens, output_tokens=output_tokens)


async def day_counter(client: redis.Redis, keys: Keys, tenant: str = TENANT) -> dict[str, int]:
    found = [k async for k in client.scan_iter(match=f"{keys.prefix}c:{tenant}:d:*")]
    assert len(found) <= 1, found
    if not found:
        return {}
    return {k.decode(): int(v) for k, v in (await client.hgetall(found[0])).items()}


async def test_tenant_without_limits_reserves_nothing(urls, keys, client) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=OTHER, limits=Limits(daily_tokens=10))])
    assert await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body()) is None
    assert [k async for k in client.scan_iter(match=f"{keys.prefix}*")] == []


async def test_calls_get_what_is_left_as_their_ceiling_then_402_with_the_seed_body(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))])
    held = [await quota.reserve(hold=hold(f"r{i}"), key=KEY, model=CHAT, ask=body(200)) for i in range(4)]
    assert [(h.tokens, h.ceiling) for h in held] == [(PROMPT + 200, 200)] * 4
    last = await quota.reserve(hold=hold("r5"), key=KEY, model=CHAT, ask=body(200))
    assert last.ceiling == 1000 - 4 * (PROMPT + 200) - PROMPT, "what is left after its prompt, not what it asked"
    held.append(last)
    with pytest.raises(QuotaExceeded) as refused:
        await quota.reserve(hold=hold("r6"), key=KEY, model=CHAT, ask=body(200))
    exc = refused.value
    assert exc.status == 402
    assert exc.body() == {"error": "Quota exceeded", "quota_type": "daily", "limit": 1000,
                          "used": sum(h.tokens for h in held), "reset_time": exc.body()["reset_time"],
                          "suggested_models": ["mini"]}
    assert exc.body()["reset_time"].endswith("T00:00:00Z")


async def test_a_call_naming_no_max_tokens_gets_the_default_capped_by_what_is_left(urls, keys) -> None:
    limits = Limits(daily_tokens=PROMPT * 2 + 150 + 40, default_max_tokens=150)
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=limits)])
    first = await quota.reserve(hold=hold("a"), key=KEY, model=CHAT, ask=body(None))
    second = await quota.reserve(hold=hold("b"), key=KEY, model=CHAT, ask=body(None, n=2))
    assert (first.ceiling, second.ceiling) == (150, 20), "two choices share the 40 left"
    assert second.tokens == PROMPT + 2 * 20


async def test_without_token_limits_the_call_keeps_its_own_output_limit(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(rpm=100))])
    held = await quota.reserve(hold=hold("a"), key=KEY, model=CHAT, ask=body(None))
    assert held is not None and held.ceiling is None


async def test_embeddings_hold_exactly_their_counted_input(urls, keys, client) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))])
    texts = read_request("openai.embeddings", b'{"model": "e", "input": ["hello world", "railway yards"]}')
    held = await quota.reserve(hold=hold("e1"), key=KEY, model=MINI, ask=texts.ask(8192, ESTIMATOR))
    counted = ESTIMATOR.count("hello world") + ESTIMATOR.count("railway yards")
    assert held.ceiling is None and held.tokens == counted == (await day_counter(client, keys))["tok"]


async def test_answers_carry_openai_rate_limit_headers(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(rpm=10, daily_tokens=5000))])
    held = await quota.reserve(hold=hold("h1"), key=KEY, model=CHAT, ask=body(100))
    headers = dict(held.headers)
    assert headers["x-ratelimit-limit-requests"] == "10" and headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-limit-tokens"] == "5000"
    assert headers["x-ratelimit-remaining-tokens"] == str(5000 - PROMPT - 100)
    assert headers["x-ratelimit-reset-requests"].endswith("s") and headers["x-ratelimit-reset-tokens"].endswith("s")


async def test_concurrent_reservations_from_two_instances_never_pass_the_limit(urls, keys, client) -> None:
    limits = [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=10_000))]
    instances = [quota_client(urls, keys, limits), quota_client(urls, keys, limits)]

    async def one(i: int) -> int:
        try:
            held = await instances[i % 2].reserve(hold=hold(f"r{i}"), key=KEY, model=CHAT, ask=body(90))
            return held.tokens
        except QuotaExceeded:
            return 0

    granted = await asyncio.gather(*(one(i) for i in range(200)))
    counter = await day_counter(client, keys)
    assert counter["tok"] == sum(granted) <= 10_000
    assert 10_000 - sum(granted) <= PROMPT, "refused only once not even one output token fits"
    assert await client.zcard(keys.holds) == sum(1 for g in granted if g)


async def test_settlement_replaces_the_hold_with_actual_usage_priced_from_the_registry(urls, keys, client, valkey,
                                                                                        pool) -> None:
    limits = LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=10_000, budget_usd=1.0))
    quota = quota_client(urls, keys, [limits])
    held = await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    assert (await day_counter(client, keys))["tok"] == held.tokens
    await record(pool, [*registry_events(), limits, usage("r1", 7, 11)])
    projection = counters(pool, valkey, keys)
    assert await projection.step() > 0
    counter = await day_counter(client, keys)
    # the tenant's assignment price (1.0 in) overrides the model's (2.0); output at the model's 4.0 per 1M
    assert counter == {"tok": 18, "in": 7, "out": 11, "req": 1, "usd": 7 * 1000 + 11 * 4000,
                       "tok@llama3.2": 18, "in@llama3.2": 7, "out@llama3.2": 11, "req@llama3.2": 1,
                       "usd@llama3.2": 7 * 1000 + 11 * 4000}
    assert await client.zcard(keys.holds) == 0
    assert await projection.step() == 0               # nothing new: settling twice is impossible


async def test_calls_sharing_a_request_id_hold_apart_and_each_settlement_frees_only_its_own(urls, keys, client, valkey,
                                                                                          pool) -> None:
    limits = LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))
    quota = quota_client(urls, keys, [limits])
    first, second = (UsageRecorded(request_id="same", tenant_id=TENANT, key_id=KEY.key_id, model="llama3.2",
                                   api="openai.chat", outcome="ok", status=200, input_tokens=PROMPT, output_tokens=5)
                     for _ in range(2))
    held = [await quota.reserve(hold=hold_name("same", e.event_id), key=KEY, model=CHAT, ask=body(400))
            for e in (first, second)]
    assert [h.ceiling for h in held] == [400, 400] and await client.zcard(keys.holds) == 2
    await record(pool, [*registry_events(), limits, first])
    await counters(pool, valkey, keys).step()
    assert await client.zcard(keys.holds) == 1, "the other call is still running: its hold stays"
    assert (await day_counter(client, keys))["tok"] == PROMPT + 5 + held[1].tokens
    quota.release(held[1], PROMPT, 2, 1)
    await wait_for(lambda: _no_hold(client, keys), what="the second call's own release")


async def test_a_tenant_created_again_counts_from_nothing_live_and_when_rebuilt(urls, keys, client, valkey,
                                                                                 pool) -> None:
    """A removed tenant's counters, rate windows and holds end with its removal: a call of it still running then
    refunds nothing when it settles, and the tenant created again under its id counts only its own calls, live and
    when every counter is rebuilt from position 0. Another tenant's counters are untouched."""
    from switchyard_gateway.services.quota.counters import rebuild

    limits = [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=100_000, rpm=1000)),
              LimitsSet(tenant_id=OTHER, limits=Limits(daily_tokens=100_000))]
    quota = quota_client(urls, keys, limits)
    await record(pool, [*registry_events(), *limits, usage("old1", 500, 500), usage("o1", 9, 1, tenant=OTHER)])
    projection = counters(pool, valkey, keys)
    await projection.step()
    assert (await day_counter(client, keys))["tok"] == 1000
    running = await quota.reserve(hold=hold("old2"), key=KEY, model=CHAT, ask=body(100))   # in flight at removal
    assert running is not None and await client.zcard(keys.holds) == 1
    assert [k async for k in client.scan_iter(match=f"{keys.prefix}r:{TENANT}:*")], "a rate window of the tenant"
    await record(pool, [TenantRemoved(tenant_id=TENANT)])
    await projection.step()
    assert await day_counter(client, keys) == {}
    assert [k async for k in client.scan_iter(match=f"{keys.prefix}r:{TENANT}:*")] == []
    assert await client.zcard(keys.holds) == 0, "the removed tenant's hold went with it"
    await record(pool, [usage("old2", 40, 40)])            # it finishes while the tenant is gone: counts nowhere
    await projection.step()
    assert await day_counter(client, keys) == {}
    await record(pool, [TenantCreated(tenant_id=TENANT), usage("new1", 3, 4)])
    await projection.step()
    live = await day_counter(client, keys)
    assert live["tok"] == 7 and live["req"] == 1
    assert (await day_counter(client, keys, OTHER))["tok"] == 10
    await client.delete(*[k async for k in client.scan_iter(match=f"{keys.prefix}c:*")])
    await rebuild(pool, valkey, keys)
    assert await day_counter(client, keys) == live
    assert (await day_counter(client, keys, OTHER))["tok"] == 10


async def test_a_model_registered_again_counts_from_nothing_in_every_tenants_figures(urls, keys, client, valkey,
                                                                                       pool) -> None:
    """A removed model's figures end with its removal, in every tenant's counters and in the holds of calls still
    running (which then refund only the tenant's own figures): a model registered again under its id showed the
    removed one's usage in each tenant's figures of it, and a limit on it started part spent. The tenants' own
    totals keep every call; live and rebuilt from position 0 agree."""
    from switchyard_gateway.contracts.events import ModelRemoved
    from switchyard_gateway.services.quota.counters import rebuild

    limits = [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=100_000)),
              LimitsSet(tenant_id=TENANT, model_id="llama3.2", limits=Limits(daily_tokens=50_000))]
    quota = quota_client(urls, keys, limits)
    await record(pool, [*registry_events(), *limits, usage("old1", 500, 500), usage("m1", 5, 5, model="mini"),
                        usage("o1", 9, 1, tenant=OTHER)])
    projection = counters(pool, valkey, keys)
    await projection.step()
    day = await day_counter(client, keys)
    assert (day["tok"], day["tok@llama3.2"], day["tok@mini"]) == (1010, 1000, 10)
    running = await quota.reserve(hold=hold("old2"), key=KEY, model=CHAT, ask=body(100))   # in flight at removal
    assert running is not None
    assert (await day_counter(client, keys))["tok@llama3.2"] == 1000 + PROMPT + 100
    await record(pool, [ModelRemoved(model_id="llama3.2")])
    await projection.step()
    day = await day_counter(client, keys)
    assert not [name for name in day if name.endswith("@llama3.2")], day
    assert (day["tok"], day["tok@mini"]) == (1010 + PROMPT + 100, 10)      # the call in flight still holds its tokens
    assert not [n for n in await day_counter(client, keys, OTHER) if n.endswith("@llama3.2")]
    [kept] = await client.hvals(keys.hold_data)
    assert b"@llama3.2" not in kept and await client.zcard(keys.holds) == 1
    await record(pool, [usage("old2", 40, 40)])          # it finishes while the model is gone: the tenant's alone
    await projection.step()
    day = await day_counter(client, keys)
    assert day["tok"] == 1090 and not [name for name in day if name.endswith("@llama3.2")], day
    assert all(value >= 0 for value in day.values()), day
    again = ModelRegistered(model_id="llama3.2", input_price_per_1m=2.0, output_price_per_1m=4.0)
    await record(pool, [again, usage("new1", 3, 4)])      # registered again: counts only its own calls
    await projection.step()
    live = await day_counter(client, keys)
    assert (live["tok"], live.get("tok@llama3.2"), live.get("req@llama3.2")) == (1097, 7, 1), live
    assert (await day_counter(client, keys, OTHER))["tok"] == 10
    await client.delete(*[k async for k in client.scan_iter(match=f"{keys.prefix}c:*")])
    await rebuild(pool, valkey, keys)
    assert await day_counter(client, keys) == live


async def test_failed_call_settles_to_zero(urls, keys, client, valkey, pool) -> None:
    limits = LimitsSet(tenant_id=TENANT, limits=Limits(monthly_requests=5, daily_tokens=1000))
    quota = quota_client(urls, keys, [limits])
    await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    await record(pool, [*registry_events(), limits, usage("r1", 0, 0, outcome="error")])
    await counters(pool, valkey, keys).step()
    assert await day_counter(client, keys) == {"tok": 0}
    assert await client.zcard(keys.holds) == 0


async def test_hold_never_settled_expires_and_is_refunded(urls, keys, client, valkey) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))], hold_s=0.0)
    await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    assert (await day_counter(client, keys))["tok"] > 100
    released = await EXPIRE_SCRIPT.run(valkey, [keys.holds, keys.hold_data], [int(time.time() * 1000), 100])
    assert released == 1
    assert (await day_counter(client, keys))["tok"] == 0


async def test_rpm_limit_gives_429_with_rate_limit_headers(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(rpm=3))])
    for i in range(3):
        await quota.reserve(hold=hold(f"r{i}"), key=KEY if i % 2 else KEY2, model=CHAT, ask=body())
    with pytest.raises(RateLimited) as refused:
        await quota.reserve(hold=hold("r4"), key=KEY, model=CHAT, ask=body())
    exc = refused.value
    reset = int(exc.reset.timestamp())
    assert exc.status == 429 and reset % 60 == 0 and 0 < reset - time.time() <= 60
    assert exc.headers == {"retry-after": str(exc.headers["retry-after"]), "x-ratelimit-limit": "3",
                           "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset),
                           "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
                           "x-ratelimit-reset-requests": exc.headers["x-ratelimit-reset-requests"]}
    assert 1 <= int(exc.headers["retry-after"]) <= 60
    assert exc.body()["limit_type"] == "rpm" and exc.body()["used"] == 3


async def test_a_refusal_carries_the_rate_limit_headers_of_both_kinds(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(rpm=10, daily_tokens=PROMPT + 53))])
    await quota.reserve(hold=hold("q1"), key=KEY, model=CHAT, ask=body(50))     # 3 tokens left: not the prompt
    with pytest.raises(QuotaExceeded) as over_tokens:                   # the day's tokens refuse it ...
        await quota.reserve(hold=hold("q2"), key=KEY, model=CHAT, ask=body(50))
    headers = over_tokens.value.headers
    assert headers["x-ratelimit-limit-tokens"] == str(PROMPT + 53)        # ... so they speak for tokens,
    assert headers["x-ratelimit-remaining-tokens"] == "3"
    assert headers["x-ratelimit-limit-requests"] == "10"                  # and the minute's requests for requests
    assert headers["x-ratelimit-remaining-requests"] == "9"
    assert headers["x-ratelimit-reset-requests"].endswith("s")

    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(rpm=3, daily_tokens=100_000))])
    for i in range(2):                                                  # q1 was the minute's first
        await quota.reserve(hold=hold(f"r{i}"), key=KEY, model=CHAT, ask=body(10))
    with pytest.raises(RateLimited) as over_requests:                   # the minute's requests refuse it ...
        await quota.reserve(hold=hold("q3"), key=KEY, model=CHAT, ask=body(10))
    headers = over_requests.value.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-tokens"] == "100000"               # ... and the day's tokens speak for tokens
    assert headers["x-ratelimit-remaining-tokens"] == str(100_000 - (PROMPT + 50) - 2 * (PROMPT + 10))


async def test_per_key_rpm_limits_each_key_on_its_own(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(key_rpm=1))])
    await quota.reserve(hold=hold("a"), key=KEY, model=CHAT, ask=body())
    await quota.reserve(hold=hold("b"), key=KEY2, model=CHAT, ask=body())
    with pytest.raises(RateLimited) as refused:
        await quota.reserve(hold=hold("c"), key=KEY, model=CHAT, ask=body())
    assert refused.value.limit_type == "key_rpm"


async def test_budget_refuses_the_call_whose_estimated_cost_does_not_fit(urls, keys) -> None:
    # 100 prompt+output tokens at <= 4 USD per 1M cost well under 0.001 USD; a 0.0005 USD budget fits one call
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(budget_usd=0.0005,
                                                                                budget_period="week"))])
    held = await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    assert held.nanos == PROMPT * 1000 + 100 * 4000     # prompt at 1.0, output at 4.0 per 1M
    with pytest.raises(QuotaExceeded) as refused:
        while True:
            await quota.reserve(hold=hold(uuid.uuid4().hex), key=KEY, model=CHAT, ask=body(100))
    assert refused.value.quota_type == "budget" and refused.value.limit == 0.0005
    assert refused.value.used <= 0.0005


async def test_per_model_limit_applies_to_that_model_only(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, model_id="llama3.2",
                                                limits=Limits(monthly_tokens=150))])
    await quota.reserve(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    rest = await quota.reserve(hold=hold("r2"), key=KEY, model=CHAT, ask=body(100))
    assert rest.ceiling == 150 - (PROMPT + 100) - PROMPT
    with pytest.raises(QuotaExceeded) as refused:
        await quota.reserve(hold=hold("r3"), key=KEY, model=CHAT, ask=body(100))
    assert refused.value.quota_type == "monthly" and refused.value.model_id == "llama3.2"
    assert await quota.reserve(hold=hold("r4"), key=KEY, model=MINI, ask=body(100)) is None


async def test_fallback_on_quota_reserves_for_the_next_allowed_model(urls, keys) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, model_id="llama3.2",
                                                limits=Limits(daily_tokens=PROMPT - 1)),
                                      LimitsSet(tenant_id=TENANT, model_id="mini", limits=Limits(daily_tokens=500))])
    with pytest.raises(QuotaExceeded):
        await quota.reserve_or_fallback(hold=hold("r1"), key=KEY, model=CHAT, ask=body(100))
    quota.catalog.apply(TenantCreated(tenant_id=TENANT, fallback_on_quota=True))
    model, held = await quota.reserve_or_fallback(hold=hold("r2"), key=KEY, model=CHAT, ask=body(100))
    assert model.model_id == "mini" and held is not None and held.model_id == "mini"


async def test_rebuild_from_the_log_equals_the_live_counters(urls, keys, client, valkey, pool) -> None:
    limits = LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=100_000, timezone="Asia/Tokyo"))
    quota = quota_client(urls, keys, [limits])
    await record(pool, [*registry_events(), limits])
    projection = counters(pool, valkey, keys)
    for i in range(30):
        await quota.reserve(hold=hold(f"r{i}"), key=KEY, model=CHAT, ask=body(50))
        if i < 25:       # five calls are still running when the rebuild starts
            await record(pool, [usage(f"r{i}", 3 + i, 5, outcome="ok" if i % 7 else "error"),
                                usage(f"o{i}", 2, 2, tenant=OTHER, model="mini")])
        if i % 10 == 0:
            await projection.step()
    while await projection.step():
        pass
    live = {k: await client.hgetall(k) async for k in client.scan_iter(match=f"{keys.prefix}c:*")}
    assert await client.zcard(keys.holds) == 5
    await client.delete(*live)                          # lose every counter
    events, _ = await rebuild(pool, valkey, keys)
    rebuilt = {k: await client.hgetall(k) async for k in client.scan_iter(match=f"{keys.prefix}c:*")}
    assert events == 5 + 1 + 50 and rebuilt == live
    assert await client.zcard(keys.holds) == 5


async def test_one_quota_replica_at_a_time_runs_the_projection(keys, client, valkey) -> None:
    first, second = ValkeyLead(valkey, keys.leader, "a"), ValkeyLead(valkey, keys.leader, "b")
    assert await first.hold() == 0 and await second.hold() > 0     # 0: leads; else seconds to wait
    assert await first.hold() == 0                       # renewing keeps the lead
    await client.delete(keys.leader)                     # the leader died and its lease ran out
    assert await second.hold() == 0 and await first.hold() > 0


async def test_a_released_hold_frees_its_quota_at_once_and_the_log_still_settles_it(urls, keys, client, valkey,
                                                                                     pool) -> None:
    limits = LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000, tpm=1000))
    quota = quota_client(urls, keys, [limits])
    held = await quota.reserve(hold=hold("gone"), key=KEY, model=CHAT, ask=body(500))
    assert (await day_counter(client, keys))["tok"] == PROMPT + 500
    quota.release(held, PROMPT, 3, 1)                          # the client left after three tokens
    await wait_for(lambda: _no_hold(client, keys), what="the hold released")
    assert (await day_counter(client, keys))["tok"] == 0      # the day's counter waits for the log
    rates = [k async for k in client.scan_iter(match=f"{keys.prefix}r:*")]
    assert int(await client.hget(rates[0], "tok")) == PROMPT + 3, "the minute keeps what was used"
    await record(pool, [*registry_events(), limits, usage("gone", PROMPT, 3, outcome="cancelled")])
    await counters(pool, valkey, keys).step()
    assert (await day_counter(client, keys))["tok"] == PROMPT + 3


async def _no_hold(client: redis.Redis, keys: Keys) -> bool:
    return await client.zcard(keys.holds) == 0


async def test_valkey_away_lets_calls_through_when_open_and_refuses_them_when_closed(urls, keys) -> None:
    limits = [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))]
    nobody = "redis://127.0.0.1:9/0"                           # the discard port: nothing listens
    before = metrics.QUOTA_UNAVAILABLE.labels("open")._value.get()
    opened = quota_client(urls, keys, limits, redis_url=nobody, on_error="open")
    through = await opened.reserve(hold=hold("o1"), key=KEY, model=CHAT, ask=body(None))
    assert through is not None and not through.held and through.ceiling == 256, "still held to its default"
    assert metrics.QUOTA_UNAVAILABLE.labels("open")._value.get() == before + 1
    closed = quota_client(urls, keys, limits, redis_url=nobody, on_error="closed")
    with pytest.raises(QuotaUnavailable) as refused:
        await closed.reserve(hold=hold("c1"), key=KEY, model=CHAT, ask=body(100))
    assert refused.value.status == 503 and refused.value.headers["retry-after"] == "1"


async def test_a_script_error_refuses_the_call_even_when_failing_open(urls, keys, client) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(daily_tokens=1000))])
    await quota.reserve(hold=hold("ok"), key=KEY, model=CHAT, ask=body(10))
    day = [k async for k in client.scan_iter(match=f"{keys.prefix}c:{TENANT}:d:*")][0]
    await client.delete(day)
    await client.set(day, "not a hash")                        # every script call on it now fails
    with pytest.raises(QuotaUnavailable) as refused:
        await quota.reserve(hold=hold("broken"), key=KEY, model=CHAT, ask=body(10))
    assert refused.value.code == "quota_unavailable"


@pytest.mark.parametrize("hostile", [
    {"max_tokens": 99_999}, {"n": 128, "max_tokens": 99_999}, {"n": 128},
    {"messages": [{"role": "user", "content": "x" * 300_000}]},
])
async def test_the_largest_values_a_request_may_carry_never_make_the_script_fail(urls, keys, hostile) -> None:
    quota = quota_client(urls, keys, [LimitsSet(tenant_id=TENANT, limits=Limits(
        daily_tokens=10**15, monthly_tokens=10**15, tpm=10**15, budget_usd=1_000_000))])
    fields = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], **hostile}
    ask = read_request("openai.chat", msgspec.json.encode(fields)).ask(100_000, ESTIMATOR)
    held = await quota.reserve(hold=hold(uuid.uuid4().hex), key=KEY, model=CHAT, ask=ask)
    assert held is not None and held.held and held.ceiling == (ask.output or 256)


async def test_a_plan_carrying_its_own_amounts_reserves_as_the_quota_service_does(keys, client, valkey) -> None:
    from datetime import UTC, datetime

    from switchyard_gateway.quotas.plan import Estimate, plan
    from switchyard_gateway.quotas.scripts import RESERVE_SCRIPT, reserve_call

    planned = plan(keys, (Limits(daily_tokens=250, monthly_requests=10), Limits()), "UTC", TENANT, KEY.key_id,
                   "llama3.2", datetime.now(UTC), Estimate(100, 0))
    items = [p.counter for p in planned]
    replies = []
    for request_id in ("a", "b", "c"):
        names, args = reserve_call(keys, request_id, int(time.time() * 1000) + 60_000, items)
        replies.append(await RESERVE_SCRIPT.run(valkey, names, args))
    assert replies[0] == [1, 0, 100, 1] and replies[1] == [1, 0, 200, 2]
    assert replies[2] == [0, 1, 200, 200, 2], "the third would pass the daily 250: refused (every counter's value told), nothing charged"
    assert (await day_counter(client, keys))["tok"] == 200
