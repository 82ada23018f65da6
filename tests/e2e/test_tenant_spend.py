"""End to end: examples/tenant_spend.py, a subscriber in a process of its own, follows a log of 100,000 events
(`SWITCHYARD_SPEND_EVENTS`) served by the metering service, is killed with SIGKILL half-way through catching up,
starts again, goes live while gateways keep publishing usage, and ends with every tenant's calls, tokens and cost
equal to metering's own projections."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import httpx
import msgspec

from benchmarks.ingest import messages, usage_events
from switchyard_gateway.contracts.events import ModelRegistered, TenantModelAssigned, TenantModelUnassigned
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, create_database, stop_up, wait_for

EVENTS = int(os.environ.get("SWITCHYARD_SPEND_EVENTS", "100000"))
LIVE_EVENTS = 2000
MODELS = ("llama3.2", "nomic-embed-text", "qwen2.5")


def prices_then_usage(n: int) -> list:
    """The log: list prices, a tenant's own price, usage (some of it read from the prompt cache), a price change
    half-way and the tenant's price withdrawn three quarters in; the order is what prices each call."""
    log: list = [ModelRegistered(model_id=m, input_price_per_1m=0.15 * (i + 1), output_price_per_1m=0.6 * (i + 1),
                                 cached_input_price_per_1m=0.075 if i == 0 else None) for i, m in enumerate(MODELS)]
    log.append(TenantModelAssigned(tenant_id="tenant-03", model_id="llama3.2", input_price_per_1m=0.1,
                                   output_price_per_1m=0.2))
    usage = [msgspec.structs.replace(e, cached_tokens=e.input_tokens // 3) if i % 7 == 0 else e
             for i, e in enumerate(usage_events(n, datetime.now(UTC) - timedelta(hours=2), 3600.0, seed=7))]
    half, three_quarters = n // 2, 3 * n // 4
    return [*log, *usage[:half], ModelRegistered(model_id="qwen2.5", input_price_per_1m=1.25, output_price_per_1m=2.5),
            *usage[half:three_quarters], TenantModelUnassigned(tenant_id="tenant-03", model_id="llama3.2"),
            *usage[three_quarters:]]


async def fill(database_url: str) -> int:
    pool = await eventlog.create_pool(database_url)
    try:
        async with pool.acquire() as conn:
            await eventlog.migrate(conn)
        events = prices_then_usage(EVENTS)
        for start in range(0, len(events), 20_000):
            async with pool.acquire() as conn, conn.transaction():
                await eventlog.append(conn, events[start:start + 20_000])
        async with pool.acquire() as conn:
            return await eventlog.head(conn)
    finally:
        await pool.close()


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


async def position(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('switchyard_subscriptions') IS NOT NULL"):
            return 0
        return await conn.fetchval("SELECT coalesce(max(position), 0) FROM switchyard_subscriptions") or 0
    finally:
        await conn.close()


async def metering_figures(database_url: str) -> dict[str, tuple]:
    conn = await asyncpg.connect(database_url)
    try:
        counts = {r["tenant"]: tuple(r)[1:] for r in await conn.fetch(
            "SELECT tenant, sum(calls), sum(errors), sum(input_tokens), sum(output_tokens), sum(cached_tokens)"
            " FROM tenant_token_counts GROUP BY tenant")}
        cost = {r["tenant"]: tuple(r)[1:] for r in await conn.fetch(
            "SELECT tenant, sum(unpriced_calls), sum(input_cost_usd + output_cost_usd) FROM usage_cost GROUP BY tenant")}
    finally:
        await conn.close()
    return {t: (*counts[t], *cost.get(t, (0, Decimal(0)))) for t in counts}


async def example_figures(database_url: str) -> dict[str, tuple]:
    conn = await asyncpg.connect(database_url)
    try:
        return {r["tenant"]: (r["calls"], r["errors"], r["input_tokens"], r["output_tokens"], r["cached_tokens"],
                              r["unpriced_calls"], r["cost_usd"]) for r in await conn.fetch("SELECT * FROM tenant_spend")}
    finally:
        await conn.close()


async def test_tenant_spend_killed_half_way_ends_equal_to_metering(own_nats: str, database_url: str, urls,
                                                                  stack_root: Path) -> None:
    began = time.monotonic()
    head = await fill(database_url)
    filled_s = time.monotonic() - began
    own = await create_database(urls.database_url, f"spend_{uuid.uuid4().hex[:10]}")
    logs = stack_root / f"spend-{uuid.uuid4().hex[:6]}"
    logs.mkdir()
    port = pick_free_port(set())
    env = {**os.environ, "SWITCHYARD_NATS_URL": own_nats, "SWITCHYARD_DATABASE_URL": database_url,
           "SWITCHYARD_REDIS_URL": urls.redis_url, "SWITCHYARD_PORT": str(port), "SWITCHYARD_LOG_JSON": "true"}
    metering = start(["-m", "switchyard_gateway.services.metering"], env, logs / "metering.log")
    example = [str(REPO / "examples" / "tenant_spend.py"), "--database", own, "--nats", own_nats]
    subscriber = None
    try:
        await wait_for(lambda: _healthy(port), 60, 0.1, "metering to start")
        subscriber = start(example, env, logs / "spend.log")
        await wait_for(lambda: _past(own, head // 3), 60, 0.02, "the subscriber a third of the way")
        subscriber.kill()                                   # SIGKILL, half-way through catching up
        subscriber.wait()
        killed_at = await position(own)
        assert 0 < killed_at < head, (killed_at, head)

        subscriber = start(example, env, logs / "spend.log")
        await wait_for(lambda: b"live at position" in (logs / "spend.log").read_bytes(), 60, 0.05, "it to go live")
        nc = await natsio.connect(own_nats, "gateways", 10)    # usage keeps coming, the way gateways publish it
        live = list(usage_events(LIVE_EVENTS, datetime.now(UTC), 2.0, seed=8))
        for subject, body, headers in messages(live):
            await nc.jetstream().publish(subject, body, headers=headers)
        await nc.close()
        total = EVENTS + LIVE_EVENTS
        await wait_for(lambda: _calls(database_url, total), 60, 0.1, "metering to record the live usage")
        async with _connect(database_url) as conn:
            head = await eventlog.head(conn)
        await wait_for(lambda: _past(own, head), 60, 0.05, "the subscriber at the log's head")
        caught_up_s = time.monotonic() - began - filled_s
    finally:
        if subscriber is not None:
            stop_up(subscriber)
        stop_up(metering)
    theirs, ours = await metering_figures(database_url), await example_figures(own)
    assert sum(f[0] for f in ours.values()) == total
    assert ours == theirs
    assert sum(f[6] for f in ours.values()) > 0
    print(f"\n{EVENTS:,} events filled in {filled_s:.1f} s; killed at {killed_at:,} of {head:,}; caught up, live and "
          f"equal {caught_up_s:.1f} s later")


async def _healthy(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{port}/health", timeout=1)).status_code == 200
    except httpx.HTTPError:
        return False


async def _past(database_url: str, target: int) -> bool:
    return await position(database_url) >= target


async def _calls(database_url: str, n: int) -> bool:
    async with _connect(database_url) as conn:
        return await conn.fetchval("SELECT coalesce(sum(calls), 0) FROM tenant_token_counts") >= n


@contextlib.asynccontextmanager
async def _connect(url: str):
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()
