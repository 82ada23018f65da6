"""The quota counters follow the log by push on real PostgreSQL and Valkey: each commit's NOTIFY wakes them,
replicas never apply a batch twice, and a lost LISTEN connection costs nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from switchyard_gateway.contracts.quota import Limits, LimitsSet
from switchyard_gateway.events import LogFollower, LogNotices
from switchyard_gateway.events.rebuild import count_upto
from switchyard_gateway.kit import eventlog
from switchyard_gateway.quotas.ledger import PROJECTION_TYPES
from switchyard_gateway.resp import ValkeyError
from switchyard_gateway.services.quota.counters import Counters, ValkeyLead, rebuild
from tests.integration.test_quota_reservation import (  # noqa: F401 — fixtures
    client, day_counter, keys, registry_events, usage, valkey,
)

LIMITS = LimitsSet(tenant_id="acme", limits=Limits(daily_tokens=1_000_000))


@contextlib.asynccontextmanager
async def following(pool, valkey, keys, database_url: str, token: str) -> AsyncIterator[LogFollower]:
    """A quota replica's counter follower, running by push as the service runs it."""
    notices = LogNotices(database_url)
    follower = LogFollower(pool, Counters(pool, valkey, keys), notices, lead=ValkeyLead(valkey, keys.leader, token),
                           errors=(OSError, asyncpg.PostgresError, ValkeyError))
    tasks = [asyncio.create_task(notices.run()), asyncio.create_task(follower.run())]
    await asyncio.wait_for(notices.listening.wait(), 10)
    try:
        yield follower
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def record(pool, events: list) -> int:
    """Append in one transaction; the position of the last event."""
    async with pool.acquire() as conn, conn.transaction():
        appended = await eventlog.append(conn, events)
    return appended[-1][0]


async def test_a_commit_is_settled_without_anyone_asking(pool, valkey, keys, client, database_url) -> None:
    await record(pool, [*registry_events(), LIMITS])
    async with following(pool, valkey, keys, database_url, "a") as follower:
        last = await record(pool, [usage("r1", 7, 11)])
        assert await follower.position.reach(last, timeout_s=10), "the NOTIFY woke the follower"
        assert (await day_counter(client, keys))["tok"] == 18
        last = await record(pool, [usage("r2", 1, 1), usage("r3", 2, 2)])
        assert await follower.position.reach(last, timeout_s=10)
        assert (await day_counter(client, keys))["tok"] == 24


async def test_two_replicas_apply_every_event_exactly_once(pool, valkey, keys, client, database_url) -> None:
    await record(pool, [*registry_events(), LIMITS])
    async with following(pool, valkey, keys, database_url, "a") as first, \
            following(pool, valkey, keys, database_url, "b") as second:
        last = 0
        for i in range(40):
            last = await record(pool, [usage(f"r{i}", i, 1), usage(f"s{i}", 1, i)])
        await asyncio.wait([asyncio.ensure_future(first.position.reach(last)),
                            asyncio.ensure_future(second.position.reach(last))],
                           timeout=15, return_when=asyncio.FIRST_COMPLETED)
        assert max(first.position.value, second.position.value) >= last
        live = await day_counter(client, keys)
    assert live["tok"] == 2 * sum(range(40)) + 80 and live["req"] == 80
    async with pool.acquire() as conn:
        in_log = await count_upto(conn, PROJECTION_TYPES, await eventlog.head(conn))
    assert first.applied + second.applied == in_log, "every event applied once, by one replica or the other"
    await client.delete(*[k async for k in client.scan_iter(match=f"{keys.prefix}c:*")])
    await rebuild(pool, valkey, keys)
    assert await day_counter(client, keys) == live


async def test_a_lost_listen_connection_is_reopened_and_nothing_is_missed(pool, valkey, keys, client,
                                                                          database_url) -> None:
    await record(pool, [*registry_events(), LIMITS])
    async with following(pool, valkey, keys, database_url, "a") as follower:
        async with pool.acquire() as conn:
            listeners = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%'")
        assert listeners == 1
        last = await record(pool, [usage("r1", 5, 5)])          # committed while no one may be listening
        assert await follower.position.reach(last, timeout_s=15), "caught up once listening again"
        assert (await day_counter(client, keys))["tok"] == 10
        last = await record(pool, [usage("r2", 1, 1)])
        assert await follower.position.reach(last, timeout_s=15)
