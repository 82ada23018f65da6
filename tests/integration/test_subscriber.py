"""The subscriber kit against metering's replay and feed (in this process, on a NATS server of the module's own):
each event applied once into the subscriber's own table across catch-up, the switch to live and restarts; poison
events set aside on DEADLETTER while it goes on, listed, and taken again after a fix; a live tail that goes wrong
sends it back to the log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

import asyncpg
import msgspec
import pytest

from switchyard_gateway.cli import deadletters, main
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode_batch
from switchyard_gateway.contracts.events import TenantCreated, UsageRecorded, subject_of
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import create_database, wait_for
from tests.integration.logharness import Metering, usage

SEEN = "CREATE TABLE IF NOT EXISTS seen (position bigint PRIMARY KEY, event_id uuid NOT NULL, tenant text," \
       " tokens int NOT NULL CHECK (tokens >= 0))"


async def record(conn: asyncpg.Connection, batch) -> None:
    """The subscriber's own table: one row per event (a second apply of one would break the primary key)."""
    await conn.execute(SEEN)
    await conn.executemany("INSERT INTO seen VALUES ($1, $2, $3, $4)",
                           [(p, e.event_id, e.tenant, getattr(e, "input_tokens", 0)) for p, e in batch])


@pytest.fixture
async def own_database(urls) -> str:
    """The subscriber's database, apart from the log's."""
    return await create_database(urls.database_url, f"sub_{uuid.uuid4().hex[:12]}")


@contextlib.asynccontextmanager
async def running(subscriber: Subscriber):
    task = asyncio.ensure_future(subscriber.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def seen(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(SEEN)
        return await conn.fetch("SELECT * FROM seen ORDER BY position")
    finally:
        await conn.close()


async def test_catches_up_goes_live_and_applies_every_event_once_across_a_restart(
        metering: Metering, nats_client, own_database: str) -> None:
    head = await metering.append(usage(i, f"t{i % 4}") for i in range(3000))
    subscriber = Subscriber("spend", record, nc=nats_client, database_url=own_database, page_events=500)
    async with running(subscriber):
        assert await subscriber.position.reach(head, 30)
        await asyncio.wait_for(subscriber.live.wait(), 10)
        head = await metering.append(usage(i, "t1") for i in range(3000, 3100))
        assert await subscriber.position.reach(head, 30)
    assert subscriber.switches == 1
    head = await metering.append(usage(i, "t2") for i in range(3100, 3200))        # while it is stopped
    again = Subscriber("spend", record, nc=nats_client, database_url=own_database)
    async with running(again):
        assert await again.position.reach(head, 30)
    rows = await seen(own_database)
    assert [r["position"] for r in rows] == list(range(1, head + 1))
    assert again.applied == 100


async def test_a_tenant_subscriber_sees_only_its_tenant_and_types(metering: Metering, nats_client,
                                                                   own_database: str) -> None:
    head = await metering.append([TenantCreated(tenant_id="acme"), *(usage(i, ("acme", "beta")[i % 2]) for i in range(20))])
    subscriber = Subscriber("acme-usage", record, nc=nats_client, database_url=own_database, tenant="acme",
                            types=["usage"])
    async with running(subscriber):
        await asyncio.wait_for(subscriber.live.wait(), 10)
        head = await metering.append([usage(100, "beta"), usage(101, "acme")])
        await wait_for(lambda: subscriber.position.value >= head - 0 or None, 10, what="the acme event live")
        await wait_for(_count(own_database, 11), 10, what="eleven acme usage events")
    rows = await seen(own_database)
    assert {r["tenant"] for r in rows} == {"acme"} and len(rows) == 11


def _count(database_url: str, n: int):
    async def check() -> bool:
        return len(await seen(database_url)) == n
    return check


async def test_switch_over_20_times_while_usage_is_published_loses_and_repeats_nothing(
        nats_client, pool, database_url: str, urls) -> None:
    """Usage events are published on USAGE the way gateways do, all along; 20 subscribers in turn start a few
    thousand events back, catch up, switch to live and apply a few hundred more; each must hold every usage event
    of the log from its start to its position, once."""
    harness = Metering(nats_client, pool, database_url)
    await harness.start(ingest=True)
    js = nats_client.jetstream()
    stop = asyncio.Event()
    published = 0

    async def gateway() -> None:
        nonlocal published
        while not stop.is_set():
            batch = [UsageRecorded(request_id=f"g{published + i}", tenant_id=f"t{i % 5}", key_id="k",
                                   model="llama3.2", api="openai.chat", outcome="ok", status=200,
                                   input_tokens=1, output_tokens=1) for i in range(40)]
            await js.publish(subject_of(batch[0]), encode_batch(batch),
                             headers={subjects.MSG_ID_HEADER: f"{batch[0].event_id}+{len(batch)}"})
            published += len(batch)
            await asyncio.sleep(0.02)                  # about 2,000 events a second

    publishing = asyncio.ensure_future(gateway())
    results = []
    try:
        await wait_for(lambda: harness.ingest.position.value > 2000 or None, 30, what="a log to catch up on")
        for run in range(20):
            database = await create_database(urls.database_url, f"sw_{uuid.uuid4().hex[:10]}")
            start = max(0, harness.ingest.position.value - 3000)
            subscriber = Subscriber(f"switch-{run}", record, nc=nats_client, database_url=database,
                                    types=["usage"], page_events=400, start=start)
            async with running(subscriber):
                await asyncio.wait_for(subscriber.live.wait(), 30)
                switched_at = subscriber.position.value
                assert await subscriber.position.reach(switched_at + 300, 30), "live events did not arrive"
            async with pool.acquire() as conn:
                expected = [r["position"] for r in await conn.fetch(
                    "SELECT position FROM events WHERE type = $1 AND position > $2 AND position <= $3 ORDER BY position",
                    subjects.USAGE_RECORDED, start, subscriber.position.value)]
            got = [r["position"] for r in await seen(database)]
            results.append((len(expected), len(set(expected) - set(got)), len(got) - len(set(got))))
            assert got == expected, f"run {run}: lost {sorted(set(expected) - set(got))[:5]}, extra {sorted(set(got) - set(expected))[:5]}"
    finally:
        stop.set()
        await publishing
        await harness.stop()
    assert len(results) == 20 and all(lost == 0 and twice == 0 for _, lost, twice in results)
    report = os.environ.get("SWITCHYARD_SWITCHOVER_REPORT")
    if report:
        with open(report, "w") as out:
            out.write(msgspec.json.encode({"runs": results, "published": published}).decode())


async def test_poison_events_are_set_aside_listed_and_taken_again_after_a_fix(
        metering: Metering, nats_client, pool, own_database: str, own_nats: str, capsys, monkeypatch) -> None:
    await metering.append([usage(1, "acme")])
    async with pool.acquire() as conn:          # an event of a version this build does not know, as a newer one wrote
        await conn.execute("INSERT INTO events (event_id, type, tenant, occurred_at, payload) VALUES "
                           "($1, 'usage.recorded.v9', 'acme', now(), $2)", uuid.uuid4(),
                           '{"type": "usage.recorded.v9", "tenant_id": "acme"}')
    head = await metering.append([usage(-5, "acme"), usage(3, "acme")])   # -5 tokens: the subscriber's CHECK refuses it
    subscriber = Subscriber("spend", record, nc=nats_client, database_url=own_database)
    async with running(subscriber):
        assert await subscriber.position.reach(head, 30)
        assert [r["position"] for r in await seen(own_database)] == [1, 4]       # it went on past both

        monkeypatch.setenv("SWITCHYARD_NATS_URL", own_nats)
        capsys.readouterr()
        assert await asyncio.to_thread(main, ["events", "dead-letters", "--consumer", "spend", "--json"]) == 0
        letters = _listed(capsys.readouterr().out)
        assert [(x["stage"], x["source"], x["sequence"]) for x in letters] == [("decode", "log", 2), ("apply", "log", 3)]
        assert "CheckViolationError" in letters[1]["error"] and letters[1]["retries"] == []

        conn = await asyncpg.connect(own_database)          # the fix: the subscriber's table takes negative figures
        await conn.execute("ALTER TABLE seen DROP CONSTRAINT seen_tokens_check")
        await conn.close()
        assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", str(letters[1]["id"])]) == 0
        await wait_for(_count(own_database, 3), 15, what="the retried event applied")
        assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", str(letters[1]["id"]),
                                              str(letters[0]["id"])]) == 0
        await wait_for(lambda: _letters(nats_client, 3), 15, what="the undecodable event set aside again")
        assert await asyncio.to_thread(main, ["events", "dead-letters", "--consumer", "spend", "--json"]) == 0
        after = _listed(capsys.readouterr().out)
    # the second retry of the fixed one changed nothing; the undecodable one was set aside again
    assert [r["position"] for r in await seen(own_database)] == [1, 3, 4]
    assert [(x["stage"], x["sequence"], len(x["retries"])) for x in after] == [
        ("decode", 2, 1), ("apply", 3, 2), ("decode", 2, 0)]
    assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", "999999"]) == 2


def _listed(out: str) -> list[dict]:
    """The dead letters `--json` printed (the subscriber's own log lines go to stdout too)."""
    return [msgspec.json.decode(line) for line in out.splitlines() if line.startswith('{"id"')]


async def _letters(nc, n: int) -> bool:
    return len(await deadletters.read(nc, "spend")) == n


async def test_a_large_event_set_aside_is_taken_again_whole_from_the_log(
        metering: Metering, nats_client, own_database: str) -> None:
    """A subscriber's dead letter keeps at most 64 KiB of its event (its letters would otherwise fill DEADLETTER
    without bound): a retry reads the event from the log, which holds it whole."""
    big = msgspec.structs.replace(usage(7, "acme"), request_id="r" * 100_000)
    head = await metering.append([big])
    taken: list[int] = []
    fixed = asyncio.Event()

    async def apply(_conn, batch) -> None:
        if not fixed.is_set():
            raise ValueError("not yet")
        taken.extend(len(e.request_id) for _, e in batch)

    subscriber = Subscriber("whole", apply, nc=nats_client, database_url=own_database)
    async with running(subscriber):
        assert await subscriber.position.reach(head, 30)
        [letter] = await wait_for(lambda: _of(nats_client, "whole"), 15, what="the letter")
        assert len(letter.letter.data) <= 64 * 1024 and "the log holds the event whole" in letter.letter.error
        fixed.set()
        await deadletters.send_back(nats_client, letter)
        await wait_for(lambda: taken, 15, what="the retried event applied")
    assert taken == [100_000]


async def _of(nc, name: str) -> list | None:
    return await deadletters.read(nc, name) or None
