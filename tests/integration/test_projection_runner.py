"""The projection runner on real NATS JetStream and PostgreSQL: follow, de-duplicate, rebuild."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import msgspec
import pytest
from nats.js.api import StreamConfig

from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway import events
from switchyard_gateway.events import Ingest
from switchyard_gateway.kit import eventlog
from switchyard_gateway.services.metering.projections import DECODERS, TokenCounts
from tests.conftest import wait_for


def usage(i: int, endpoint: str = "ep-1", tenant: str = "acme") -> UsageRecorded:
    return UsageRecorded(request_id=f"r{i}", tenant_id=tenant, key_id="k", model="llama3.2", api="openai.chat",
                         outcome="ok", status=200, input_tokens=i, output_tokens=1, endpoint_id=endpoint)


async def view(pool: asyncpg.Pool) -> tuple[list, list]:
    async with pool.acquire() as conn:
        by_endpoint = [tuple(r) for r in await conn.fetch("SELECT * FROM token_counts ORDER BY 1, 2")]
        by_tenant = [tuple(r) for r in await conn.fetch("SELECT * FROM tenant_token_counts ORDER BY 1, 2")]
    return by_endpoint, by_tenant


@pytest.fixture
async def stream(nc):
    name = f"T{uuid.uuid4().hex[:10].upper()}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name.lower()}.>"]))
    yield name
    await js.delete_stream(name)


async def publish(nc, stream: str, events: list[UsageRecorded]) -> None:
    js = nc.jetstream()
    for event in events:
        # A fresh message id each time: JetStream must not hide the duplicate, the log must.
        await js.publish(f"{stream.lower()}.usage", encode(event), headers={"Nats-Msg-Id": uuid.uuid4().hex})


async def test_follower_appends_once_and_projects_even_when_messages_repeat(nc, pool, stream) -> None:
    events = [usage(i, endpoint=f"ep-{i % 3}") for i in range(1, 301)]
    follower = Ingest(nc, pool, stream, "metering-test", [TokenCounts()], batch=64)
    task = asyncio.create_task(follower.run())
    try:
        await publish(nc, stream, events)
        await publish(nc, stream, events[:50])            # redelivered / re-published
        assert await follower.committed.reach(300, timeout_s=10), "300 events committed"
        async with pool.acquire() as conn:
            assert await eventlog.count(conn, "usage.recorded.v2") == 300
        by_endpoint, by_tenant = await view(pool)
        assert sum(r[2] for r in by_endpoint) == sum(range(1, 301))
        assert by_tenant == [("acme", "llama3.2", sum(range(1, 301)), 300, 300, 0, 0)]   # ..., errors, cached
        await wait_for(lambda: info_pending(nc, stream), what="every message acknowledged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def info_pending(nc, stream) -> bool:
    info = await nc.jetstream().consumer_info(stream, "metering-test")
    return info.num_ack_pending == 0 and info.num_pending == 0


async def test_rebuild_matches_live_projection(nc, pool, stream) -> None:
    follower = Ingest(nc, pool, stream, "metering-test", [TokenCounts()], batch=50)
    task = asyncio.create_task(follower.run())
    try:
        await publish(nc, stream, [usage(i, endpoint=f"ep-{i % 4}", tenant=f"t{i % 2}") for i in range(1, 201)])
        assert await follower.committed.reach(200, timeout_s=10), "200 events committed"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    live = await view(pool)
    progress: list[tuple[int, int]] = []
    applied, _ = await events.rebuild(pool, TokenCounts(), progress=lambda a, t: progress.append((a, t)),
                                           chunk=64)
    assert applied == 200 and progress[-1] == (200, 200)
    assert await view(pool) == live


async def test_usage_stored_as_v1_folds_alike_live_and_in_a_rebuild(pool) -> None:
    """Rows written before usage.recorded.v2 count in the catch-up and in a rebuild, with its fast decoders."""
    async with pool.acquire() as conn, conn.transaction():
        for i in range(1, 6):
            old = msgspec.json.decode(encode(usage(i))) | {"type": "usage.recorded.v1"}
            await conn.execute("INSERT INTO events (event_id, type, tenant, occurred_at, payload)"
                               " VALUES ($1, $2, 'acme', now(), $3::json)", old["event_id"], old["type"],
                               msgspec.json.encode(old).decode())
        await eventlog.append(conn, [usage(i) for i in range(6, 11)])
    await events.catch_up(pool, TokenCounts())
    live = await view(pool)
    assert live[0][0][2] == sum(range(1, 11))
    applied, _ = await events.rebuild(pool, TokenCounts(), chunk=3, decoders=DECODERS)
    assert applied == 10 and await view(pool) == live


async def test_catch_up_applies_events_appended_while_the_runner_was_away(pool) -> None:
    projection = TokenCounts()
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, [usage(i) for i in range(1, 11)])
    assert await events.catch_up(pool, projection) > 0
    async with pool.acquire() as conn, conn.transaction():
        appended = await eventlog.append(conn, [usage(i) for i in range(11, 21)])
    # a gap: the checkpoint is behind the first new event, so advance() reads it from the log
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, [usage(99)])
    async with pool.acquire() as conn, conn.transaction():
        position = await events.advance(conn, projection, appended[-1:])
    by_endpoint, _ = await view(pool)
    assert by_endpoint[0][2] == sum(range(1, 21))        # 99 is past the position asked for
    assert position == appended[-1][0]
    assert await events.catch_up(pool, projection) > position
    by_endpoint, _ = await view(pool)
    assert by_endpoint[0][2] == sum(range(1, 21)) + 99


async def test_a_backlog_is_gathered_in_batches_bounded_by_size(nc, pool, stream) -> None:
    """Waiting messages are taken a pull at a time until the batch holds `max_bytes`, not all at once."""
    await publish(nc, stream, [usage(i) for i in range(1, 251)])
    size = len(encode(usage(1)))
    follower = Ingest(nc, pool, stream, "metering-test", [TokenCounts()], batch=1000, linger_s=0.2,
                        max_bytes=150 * size)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable="metering-test", stream=stream)
    first = await follower._gather(sub)
    assert len(first) == 200                      # two pulls of 100 pass 150 messages' worth: it stops there
    second = await follower._gather(sub)
    assert len(second) == 50                      # the rest, after lingering for more that never came
