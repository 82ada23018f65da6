"""The event log on a real PostgreSQL: append-only, de-duplicating, ordered, migrated once."""

from __future__ import annotations

import asyncio
from datetime import UTC

import asyncpg
import msgspec
import pytest

from switchyard_gateway.contracts.events import TenantCreated, UsageRecorded
from switchyard_gateway.kit import eventlog


def usage(i: int, tenant: str = "acme") -> UsageRecorded:
    return UsageRecorded(request_id=f"r{i}", tenant_id=tenant, key_id="k", model="llama3.2", api="openai.chat",
                         outcome="ok", status=200, input_tokens=i, output_tokens=2 * i, endpoint_id="ep-1")


async def test_migrations_apply_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await eventlog.migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == [v for v, _, _ in eventlog.migrations()]


async def test_append_assigns_increasing_positions_and_skips_redeliveries(pool: asyncpg.Pool) -> None:
    events = [usage(i) for i in range(5)]
    async with pool.acquire() as conn, conn.transaction():
        first = await eventlog.append(conn, events[:3])
    async with pool.acquire() as conn, conn.transaction():
        second = await eventlog.append(conn, [events[2], events[3], events[3], events[4]])
    assert [e for _, e in first] == events[:3]
    assert [e for _, e in second] == events[3:]
    positions = [p for p, _ in first + second]
    assert positions == sorted(positions) and len(set(positions)) == 5
    async with pool.acquire() as conn:
        stored = await eventlog.read(conn, 0)
        assert [e for _, e in stored] == events
        row = await conn.fetchrow("SELECT type, tenant FROM events ORDER BY position LIMIT 1")
    assert (row["type"], row["tenant"]) == ("usage.recorded.v2", "acme")


async def test_rows_cannot_be_updated_deleted_or_truncated(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with conn.transaction():
            await eventlog.append(conn, [usage(1)])
        for sql in ("UPDATE events SET tenant = 'x'", "DELETE FROM events", "TRUNCATE events"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(sql)
        assert await eventlog.count(conn) == 1


async def test_read_filters_by_type_and_range(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        appended = await eventlog.append(conn, [usage(1), TenantCreated(tenant_id="acme"), usage(2)])
    async with pool.acquire() as conn:
        only_usage = await eventlog.read(conn, 0, types=["usage.recorded.v2"])
        upto_second = await eventlog.read(conn, 0, upto=appended[1][0])
    assert [e.request_id for _, e in only_usage] == ["r1", "r2"]
    assert len(upto_second) == 2


async def test_usage_stored_as_v1_is_read_counted_and_rebuilt_as_v2(pool: asyncpg.Pool) -> None:
    """Events the log stored before usage.recorded.v2 existed stay readable wherever v2 is asked for."""
    old = msgspec.json.decode(msgspec.json.encode(usage(1)))
    old["type"] = "usage.recorded.v1"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO events (event_id, type, tenant, occurred_at, payload)"
                           " VALUES ($1, $2, $3, now(), $4::json)", old["event_id"], old["type"], "acme",
                           msgspec.json.encode(old).decode())
        await eventlog.append(conn, [usage(2)])
    async with pool.acquire() as conn:
        read = await eventlog.read(conn, 0, types=["usage.recorded.v2"])
        assert await eventlog.count(conn, "usage.recorded.v2") == 2
        rows = await eventlog.read_rows(conn, 0, ["usage.recorded.v2"], 10, 10)
    assert [type(e) for _, e in read] == [UsageRecorded, UsageRecorded]
    assert [e.request_id for _, e in read] == ["r1", "r2"]
    assert [r["type"] for r in rows] == ["usage.recorded.v1", "usage.recorded.v2"]


async def test_concurrent_appenders_commit_in_position_order(pool: asyncpg.Pool) -> None:
    """A reader that saw position N never later finds an event below N: appends are serialised."""
    async def writer(offset: int) -> None:
        for i in range(20):
            async with pool.acquire() as conn, conn.transaction():
                await eventlog.append(conn, [usage(offset + i)])

    snapshots: list[set[int]] = []

    async def reader() -> None:
        for _ in range(60):
            async with pool.acquire() as conn:
                snapshots.append({p for p, _ in await eventlog.read(conn, 0, limit=10_000)})
            await asyncio.sleep(0)

    await asyncio.gather(writer(0), writer(1000), writer(2000), reader())
    # Whatever a later snapshot adds lies above everything an earlier one had seen.
    for earlier, later in zip(snapshots, snapshots[1:]):
        assert earlier <= later
        assert all(p > max(earlier, default=0) for p in later - earlier)
    async with pool.acquire() as conn:
        assert await eventlog.count(conn) == 60


async def test_a_copied_batch_keeps_every_byte_and_skips_what_the_log_has(pool: asyncpg.Pool) -> None:
    """Batches of COPY_FROM events or more go in through COPY, skipping what a redelivery repeats; payloads keep every byte."""
    from datetime import datetime

    awkward = ["tab\there", "new\nline", "back\\slash \\N", "cr\r", 'quote " and \\t', "ünïcödé ✓"]
    events = [UsageRecorded(request_id=f"r{i} {awkward[i % len(awkward)]}", tenant_id=f"t\\{i % 3}", key_id="k",
                            model="m", api="openai.chat", outcome="ok", status=200, input_tokens=i)
              for i in range(eventlog.COPY_FROM * 2)]
    events[5] = msgspec.structs.replace(events[5], occurred_at=datetime(2026, 1, 2, 3, 4, 5, 6))  # naive: UTC
    half = eventlog.COPY_FROM
    async with pool.acquire() as conn, conn.transaction():
        first = await eventlog.append(conn, events[:half])
    async with pool.acquire() as conn, conn.transaction():
        second = await eventlog.append(conn, events)                  # a redelivery holding the first half
    assert [e for _, e in first] == events[:half] and [e for _, e in second] == events[half:]
    async with pool.acquire() as conn:
        stored = await eventlog.read(conn, 0, limit=10_000)
        rows = await conn.fetch("SELECT position, tenant, occurred_at FROM events ORDER BY position")
    assert [e for _, e in stored] == events
    assert [p for p, _ in first + second] == [r["position"] for r in rows]
    assert [r["tenant"] for r in rows] == [e.tenant_id for e in events]
    assert rows[5]["occurred_at"] == datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


async def test_types_stored_names_each_type_the_log_holds_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await eventlog.types_stored(conn) == []
        async with conn.transaction():
            await eventlog.append(conn, [usage(1), TenantCreated(tenant_id="a"), usage(2), TenantCreated(tenant_id="b")])
        assert await eventlog.types_stored(conn) == ["tenant.created.v1", "usage.recorded.v2"]
