"""Metering's projections on real NATS JetStream and PostgreSQL: batched ingest that de-duplicates,
cost from registry prices in log order, an idempotent rollup, and rebuilds equal to the live views."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from nats.js.api import StreamConfig

from switchyard_gateway.contracts.codec import encode_batch
from switchyard_gateway.contracts.metering import RollupDays
from switchyard_gateway.contracts.events import Event, ModelRegistered, TenantModelAssigned, TenantModelUnassigned, UsageRecorded
from switchyard_gateway import events as kit
from switchyard_gateway.events import Ingest
from switchyard_gateway.kit import eventlog
from switchyard_gateway.services.metering.folds import BULK
from switchyard_gateway.services.metering.projections import DECODERS, PROJECTIONS
from switchyard_gateway.services.metering.rollup import roll_up
from tests.conftest import wait_for

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
TABLES = ("token_counts", "tenant_token_counts", "usage_minutes", "usage_days", "usage_cost",
          "cost_models", "cost_overrides")


def usage(i: int, tenant: str = "acme", model: str = "llama3.2", at: datetime = NOW, tokens_in: int = 10,
          tokens_out: int = 20, outcome: str = "ok", estimated: bool = False) -> UsageRecorded:
    return UsageRecorded(request_id=f"r{i}", tenant_id=tenant, key_id="k", model=model, api="openai.chat",
                         outcome=outcome, status=200, input_tokens=tokens_in, output_tokens=tokens_out,  # type: ignore[arg-type]
                         estimated=estimated, endpoint_id=f"ep-{i % 3}", occurred_at=at)


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple]]:
    async with pool.acquire() as conn:
        return {t: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")), key=repr) for t in TABLES}


async def append_and_advance(pool: asyncpg.Pool, events: list[Event]) -> None:
    """What the follower does with one batch: append, then advance every projection, in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        appended = await eventlog.append(conn, events)
        for projection in PROJECTIONS.values():
            await kit.advance(conn, projection, appended)


async def rebuild_everything(pool: asyncpg.Pool) -> None:
    """As `switchyard replay` does: usage events read by payload between the price events, in small pieces."""
    await kit.rebuild_all(pool, list(PROJECTIONS.values()), decoders=DECODERS, chunk=50, bulk=BULK)


@pytest.fixture
async def stream(nc):
    name = f"M{uuid.uuid4().hex[:10].upper()}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    yield name
    await js.delete_stream(name)


async def test_batches_copied_in_and_redelivered_change_nothing(nc, pool, stream) -> None:
    events = [usage(i, tenant=f"t{i % 4}", estimated=i % 5 == 0) for i in range(300)]
    js = nc.jetstream()
    batches = [events[i:i + 100] for i in range(0, 300, 100)]       # >= 64 events: the COPY path
    follower = Ingest(nc, pool, stream, "metering-test", list(PROJECTIONS.values()), batch=2)
    task = asyncio.create_task(follower.run())
    try:
        for batch in [*batches, batches[1], batches[2][:70]]:        # redelivered, whole and in part
            await js.publish(f"{stream.lower()}.usage", encode_batch(batch), headers={"Nats-Msg-Id": uuid.uuid4().hex})
        assert await follower.committed.reach(300, timeout_s=10), "300 events committed"
        await wait_for(lambda: _all_acked(nc, stream), what="every message acknowledged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    async with pool.acquire() as conn:
        assert await eventlog.count(conn, "usage.recorded.v2") == 300
        positions = [r[0] for r in await conn.fetch("SELECT position FROM events ORDER BY position")]
        assert await conn.fetchval("SELECT sum(calls) FROM usage_minutes") == 300
        assert await conn.fetchval("SELECT sum(estimated_calls) FROM usage_days") == 60
    assert len(set(positions)) == 300
    live = await snapshot(pool)
    await rebuild_everything(pool)
    assert await snapshot(pool) == live


async def _all_acked(nc, stream: str) -> bool:
    info = await nc.jetstream().consumer_info(stream, "metering-test")
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_cost_uses_the_prices_in_force_at_each_call_and_tenant_overrides(pool) -> None:
    await append_and_advance(pool, [
        ModelRegistered(model_id="llama3.2", aliases=("llama3.2:latest",), input_price_per_1m=1.0,
                        output_price_per_1m=2.0),
        usage(1, tokens_in=1_000_000, tokens_out=0),                                 # 1 USD
        usage(2, model="llama3.2:latest", tokens_in=0, tokens_out=1_000_000),       # an alias: 2 USD
    ])
    await append_and_advance(pool, [
        ModelRegistered(model_id="llama3.2", input_price_per_1m=3.0, output_price_per_1m=4.0),
        TenantModelAssigned(tenant_id="vip", model_id="llama3.2", input_price_per_1m=0.5),
        usage(3, tokens_in=1_000_000, tokens_out=1_000_000),                        # 3 + 4 USD
        usage(4, tenant="vip", tokens_in=1_000_000, tokens_out=1_000_000, estimated=True),   # 0.5 + 4 USD
        usage(5, model="unpriced", tokens_in=5, tokens_out=5),
    ])
    await append_and_advance(pool, [TenantModelUnassigned(tenant_id="vip", model_id="llama3.2"),
                                    usage(6, tenant="vip", tokens_in=1_000_000, tokens_out=0)])   # 3 USD again
    async with pool.acquire() as conn:
        rows = {(r["tenant"], r["model"]): r for r in await conn.fetch("SELECT * FROM usage_cost")}
    acme, vip = rows[("acme", "llama3.2")], rows[("vip", "llama3.2")]
    assert (acme["input_cost_usd"], acme["output_cost_usd"]) == (Decimal(4), Decimal(4))   # r1 (1) + r3 (3 + 4)
    assert rows[("acme", "llama3.2:latest")]["output_cost_usd"] == Decimal(2)
    assert (vip["input_cost_usd"], vip["output_cost_usd"], vip["estimated_cost_usd"]) == \
        (Decimal("3.5"), Decimal(4), Decimal("4.5"))
    assert rows[("acme", "unpriced")]["unpriced_calls"] == 1
    live = await snapshot(pool)
    await rebuild_everything(pool)
    assert await snapshot(pool) == live


async def test_rollup_twice_changes_nothing_and_a_rebuild_after_trimming_equals_live(pool) -> None:
    old, recent = NOW - timedelta(days=3), NOW - timedelta(minutes=5)
    await append_and_advance(pool, [usage(i, at=old + timedelta(minutes=i % 3)) for i in range(9)]
                             + [usage(100 + i, at=recent) for i in range(4)])
    async with pool.acquire() as conn:
        first = await roll_up(conn, RollupDays(days=1, trim_old=True), NOW)
        after_first = await snapshot(pool)
        second = await roll_up(conn, RollupDays(days=1, trim_old=True), NOW + timedelta(hours=2))
        assert await snapshot(pool) == after_first
        assert await conn.fetchval("SELECT sum(calls) FROM usage_minutes") == 4           # only recent minutes
        assert await conn.fetchval("SELECT sum(calls) FROM usage_days") == 13             # days keep everything
    assert (first.changed, first.minute_rows_trimmed) == (True, 3)
    assert (second.changed, second.minute_rows_trimmed) == (False, 0)
    await append_and_advance(pool, [usage(200, at=old)])      # a late event older than the trim point
    live = await snapshot(pool)
    assert sum(r[6] for r in live["usage_minutes"]) == 4 and sum(r[6] for r in live["usage_days"]) == 14
    await rebuild_everything(pool)
    assert await snapshot(pool) == live


async def test_rebuild_while_the_follower_runs_equals_live(nc, pool, stream) -> None:
    js = nc.jetstream()
    follower = Ingest(nc, pool, stream, "metering-test", list(PROJECTIONS.values()), batch=5)
    task = asyncio.create_task(follower.run())
    try:
        sent = 0
        for round_ in range(4):
            batch = [usage(round_ * 1000 + i, tenant=f"t{i % 3}", outcome="error" if i % 7 == 0 else "ok")
                     for i in range(80)]
            await js.publish(f"{stream.lower()}.usage", encode_batch(batch), headers={"Nats-Msg-Id": uuid.uuid4().hex})
            sent += len(batch)
            if round_ == 1:
                await rebuild_everything(pool)               # the follower waits on the checkpoint locks
        assert await follower.committed.reach(sent, timeout_s=10), "every event committed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    live = await snapshot(pool)
    assert sum(r[4] for r in live["token_counts"]) == 320
    await rebuild_everything(pool)
    assert await snapshot(pool) == live
