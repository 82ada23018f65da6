"""The quota service, run in this process on a NATS server of the module's own, a fresh database and the session's
Valkey: the limits of a removed tenant or model are cleared by compensating `LimitsSet` events, which every reader
of LIMITS folds in order, and limits set after the removal survive restarts and folds from position 0."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.events import Event, ModelRegistered, ModelRemoved, TenantCreated, TenantRemoved
from switchyard_gateway.contracts.quota import (
    Limits, LimitsReply, LimitsSet, LimitsUpdate, QuotaQuery, SetLimits, SetLimitsReply,
)
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.natsio import ServiceError, ServiceUnavailable
from switchyard_gateway.kit.service import close_runtime, open_runtime
from switchyard_gateway.services.gateway.pipeline.reserve import LimitsFeed
from switchyard_gateway.services.quota import handlers
from switchyard_gateway.services.quota.settings import Settings
from switchyard_gateway.services.quota.store import LimitsStore
from tests.conftest import wait_for

_reply = decoder(SetLimitsReply)
_limits = decoder(LimitsReply)


@contextlib.asynccontextmanager
async def quota_service(nc, nats_url: str, database_url: str, redis_url: str) -> AsyncIterator[handlers.Deps]:
    """The quota service as its process runs it (NATS endpoints, counters follower, background loops), answering
    `nc`; stopped at the end as a SIGTERM stops it."""
    settings = Settings(nats_url=nats_url, database_url=database_url, redis_url=redis_url, connect_timeout_s=10,
                        quota_prefix=f"t{uuid.uuid4().hex[:10]}:", log_json=True)
    runtime = await open_runtime("quota", settings, database=True)
    try:
        deps = await handlers.start(runtime)
        # its endpoints reachable from the test's own connection (a first request a moment early can find none)
        await wait_for(lambda: _answers(nc), what="the quota service answering")
        try:
            yield deps
        finally:
            await handlers.stop(deps)
    finally:
        await close_runtime(runtime)


async def _answers(nc) -> bool:
    try:
        await shown(nc, "anyone")
    except ServiceUnavailable:
        return False
    return True


@pytest.fixture
def quota(nats_client, own_nats, database_url, urls):
    return lambda: quota_service(nats_client, own_nats, database_url, urls.redis_url)


def ids(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def append(pool, *events: Event) -> int:
    """Append as the registry does; the position of the last event."""
    async with pool.acquire() as conn, conn.transaction():
        appended = await eventlog.append(conn, list(events))
    return appended[-1][0]


async def set_limits(nc, tenant: str, model: str = "", **update: object) -> SetLimitsReply:
    command = SetLimits(tenant_id=tenant, model_id=model, update=LimitsUpdate(**update))
    return _reply.decode(await natsio.request(nc, subjects.QUOTA_COMMAND, encode(command), 5))


async def shown(nc, tenant: str) -> LimitsReply:
    """What `GET /api/admin/tenants/{tenant}/limits` answers."""
    query = QuotaQuery(kind="limits", tenant_id=tenant)
    return _limits.decode(await natsio.request(nc, subjects.QUOTA_QUERY, encode(query), 5))


async def limits_logged(pool, tenant: str) -> list[tuple[int, LimitsSet]]:
    async with pool.acquire() as conn:
        return [(p, e) for p, e in await eventlog.read(conn, 0, 10_000, [subjects.LIMITS_SET])
                if e.tenant_id == tenant]


def none_of(reply: LimitsReply) -> bool:
    return reply.limits == Limits() and reply.models == {}


async def test_limits_of_a_removed_tenant_are_cleared_for_every_reader_of_limits(quota, pool, nats_client) -> None:
    gone, kept, model = ids("gone"), ids("kept"), ids("m")
    await append(pool, TenantCreated(tenant_id=gone), TenantCreated(tenant_id=kept), ModelRegistered(model_id=model))
    gateway = LimitsFeed()                                # a gateway's book: the LIMITS stream, folded
    async with quota():
        await gateway.start(nats_client, 10)
        try:
            await set_limits(nats_client, gone, monthly_requests=2, timezone="Asia/Tokyo")
            await set_limits(nats_client, gone, model, daily_tokens=100)
            await set_limits(nats_client, kept, rpm=5)
            await set_limits(nats_client, kept, model, daily_tokens=7)
            removed_at = await append(pool, TenantRemoved(tenant_id=gone))
            await wait_for(lambda: _none_shown(nats_client, gone), what="the removed tenant's limits cleared")
            clearing = [(p, e) for p, e in await limits_logged(pool, gone) if p > removed_at]
            assert sorted(e.model_id for _, e in clearing) == ["", model]
            assert all(e.limits == Limits() for _, e in clearing)
            await wait_for(lambda: gone not in gateway.book.tenants and gone not in gateway.book.models,
                           what="the gateway's book dropping them")
            assert gateway.book.applicable(gone, model) is None and gateway.book.timezone(gone) == "UTC"
            assert gateway.book.tenant(kept).rpm == 5 and gateway.book.model(kept, model).daily_tokens == 7
            assert (await shown(nats_client, kept)).models == {model: Limits(daily_tokens=7)}
            with pytest.raises(ServiceError) as refused:           # a command that crossed the removal
                await set_limits(nats_client, gone, rpm=1)
            assert refused.value.status == 404 and refused.value.body.code == "TENANT_NOT_FOUND"
        finally:
            await gateway.stop()


async def _none_shown(nc, tenant: str) -> bool:
    return none_of(await shown(nc, tenant))


async def test_a_recreated_tenants_new_limits_survive_restarts_and_folds_from_zero(quota, pool, nats_client) -> None:
    tenant, model = ids("reused"), ids("m")
    await append(pool, TenantCreated(tenant_id=tenant), ModelRegistered(model_id=model))
    async with quota():
        await set_limits(nats_client, tenant, monthly_requests=2)
        await set_limits(nats_client, tenant, model, daily_tokens=100)
    # removed and created again while no quota service runs: the next one clears the old limits as it starts
    await append(pool, TenantRemoved(tenant_id=tenant), TenantCreated(tenant_id=tenant))
    async with quota():
        assert none_of(await shown(nats_client, tenant))
        await set_limits(nats_client, tenant, monthly_requests=5)
        await set_limits(nats_client, tenant, model, daily_tokens=50)
    recorded = await limits_logged(pool, tenant)
    assert [e.limits for _, e in recorded[-2:]] == [Limits(monthly_requests=5), Limits(daily_tokens=50)]
    # removed and created again once more, live: only what was set before this removal goes
    async with quota():
        reply = await shown(nats_client, tenant)
        assert reply.limits == Limits(monthly_requests=5) and reply.models == {model: Limits(daily_tokens=50)}
        await append(pool, TenantRemoved(tenant_id=tenant))
        await wait_for(lambda: _none_shown(nats_client, tenant), what="cleared again")
        await append(pool, TenantCreated(tenant_id=tenant))
        await set_limits(nats_client, tenant, rpm=9)
    recorded = await limits_logged(pool, tenant)
    for _ in range(2):                      # restarted, twice: each folds the log from 0 and records nothing
        async with quota():
            assert (await shown(nats_client, tenant)) == LimitsReply(tenant, Limits(rpm=9), {})
    replica = LimitsStore(pool, nats_client)             # another replica, loading and sweeping on its own
    await replica.load()
    assert await replica.clear_removed() == 0
    assert replica.book.tenant(tenant) == Limits(rpm=9)
    assert await limits_logged(pool, tenant) == recorded


async def test_a_late_sweep_clears_only_limits_set_before_the_removal(pool, nats_client) -> None:
    """The limits store alone (no follower to wake it): new limits recorded after a removal but before anyone
    cleared what it voided are told apart by log position, now and after a fold from 0."""
    await natsio.ensure_streams(nats_client, 1)
    tenant, model = ids("late"), ids("m")
    await append(pool, TenantCreated(tenant_id=tenant), ModelRegistered(model_id=model))
    store = LimitsStore(pool, nats_client)
    await store.load()
    await store.set_limits(SetLimits(tenant_id=tenant, update=LimitsUpdate(monthly_requests=2)))
    await store.set_limits(SetLimits(tenant_id=tenant, model_id=model, update=LimitsUpdate(daily_tokens=100)))
    await append(pool, TenantRemoved(tenant_id=tenant), TenantCreated(tenant_id=tenant))
    await store.set_limits(SetLimits(tenant_id=tenant, update=LimitsUpdate(monthly_requests=5)))
    assert await store.clear_removed() == 1                  # the per-model limits, set before the removal
    assert store.book.tenant(tenant) == Limits(monthly_requests=5) and tenant not in store.book.models
    assert await store.clear_removed() == 0
    restarted = LimitsStore(pool, nats_client)
    await restarted.load()
    assert restarted.book.tenant(tenant) == Limits(monthly_requests=5) and tenant not in restarted.book.models
    assert await restarted.clear_removed() == 0


async def test_removing_a_model_clears_every_tenants_limits_of_it(quota, pool, nats_client) -> None:
    first, second, model, other = ids("a"), ids("b"), ids("m"), ids("o")
    await append(pool, TenantCreated(tenant_id=first), TenantCreated(tenant_id=second),
                 ModelRegistered(model_id=model), ModelRegistered(model_id=other))
    async with quota():
        await set_limits(nats_client, first, daily_tokens=1000)
        await set_limits(nats_client, first, model, daily_tokens=100)
        await set_limits(nats_client, first, other, daily_tokens=200)
        await set_limits(nats_client, second, model, rpm=3)
        await append(pool, ModelRemoved(model_id=model))
        await wait_for(lambda: _models_shown(nats_client, second, {}), what="the removed model's limits cleared")
        assert await shown(nats_client, first) == LimitsReply(first, Limits(daily_tokens=1000),
                                                               {other: Limits(daily_tokens=200)})
        with pytest.raises(ServiceError) as refused:
            await set_limits(nats_client, second, model, rpm=1)
        assert refused.value.status == 404 and refused.value.body.code == "MODEL_NOT_FOUND"
        await append(pool, ModelRegistered(model_id=model))           # registered again: limits may be set anew
        await set_limits(nats_client, second, model, rpm=4)
    async with quota():
        assert (await shown(nats_client, second)).models == {model: Limits(rpm=4)}
        assert (await shown(nats_client, first)).models == {other: Limits(daily_tokens=200)}


async def _models_shown(nc, tenant: str, models: dict) -> bool:
    return (await shown(nc, tenant)).models == models
