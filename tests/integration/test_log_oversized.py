"""A row of the log too large for one NATS message (on a NATS server of this module's own, its max_payload 16 KiB)
stops neither metering's LOG feed nor replay: each sends an `event.withheld.v1` marker in the row's place, in log
order, and goes on; a replay page never exceeds max_payload whatever its rows; the subscriber kit hands the marker
to `apply` at the row's position and reads the row again once a limit carries it."""

from __future__ import annotations

import functools
import importlib.util
import json

import asyncpg
import msgspec
import pytest
import structlog

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_event, encode
from switchyard_gateway.contracts.deadletters import EventWithheld
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.contracts.metering import ReplayPage, ReplayRequest
from switchyard_gateway.events.feed import FEED, WITHHELD, LogFeed, positions_of
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.metering import door, history
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import REPO, wait_for
from tests.integration.logharness import Metering, log_messages, usage
from tests.integration.test_outbox_oversized import MAX_PAYLOAD, SECRET, small_nats  # noqa: F401 — a fixture
from tests.integration.test_subscriber import own_database, running  # noqa: F401 — a fixture


@pytest.fixture
async def nats_client(small_nats: str):  # noqa: F811 — this module's metering (logharness) on the small server
    nc = await natsio.connect(small_nats, "oversized-log-tests", 10)
    yield nc
    await nc.close()


def big_usage(i: int, tenant: str, stored_bytes: int = MAX_PAYLOAD + 4096) -> UsageRecorded:
    """A usage event whose stored payload is about `stored_bytes` (its request id padded with SECRET)."""
    bare = usage(i, tenant)
    pad = max(0, stored_bytes - len(encode(bare)))
    return UsageRecorded(**{**msgspec.structs.asdict(bare), "request_id": f"r{i}-" + (SECRET * pad)[:pad]})


def marker_of(raw: bytes) -> EventWithheld:
    return msgspec.json.decode(raw, type=EventWithheld)


async def feeding(pool) -> None:
    """Wait for the feed's first round (its checkpoint): a feed that starts later starts at the log's head."""
    async def started() -> bool:
        async with pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT true FROM projection_checkpoints WHERE projection = $1", FEED))
    await wait_for(started, 10, what="the feed's checkpoint")


async def test_the_feed_publishes_a_marker_in_place_of_a_row_too_large_and_goes_on(metering: Metering, nats_client,
                                                                                   pool) -> None:
    assert nats_client.max_payload == MAX_PAYLOAD
    await feeding(pool)
    counted = WITHHELD.labels("feed")._value.get()
    too_large = big_usage(3, "acme")
    with structlog.testing.capture_logs() as logs:
        head = await metering.append([usage(1, "beta"), usage(2, "beta"), too_large, usage(4, "beta"),
                                      usage(5, "beta")])
        assert await metering.feed.position.reach(head, 20)      # it used to fail on position 3 at every round
        head = await metering.append([usage(6, "beta")])
        assert await metering.feed.position.reach(head, 20)
    held = await log_messages(nats_client)
    assert [(m.subject, positions_of(m.headers)) for m in held] == [
        ("log.usage.recorded.v2.beta", (1, 2)), ("log.usage.recorded.v2.acme", (3, 3)),
        ("log.usage.recorded.v2.beta", (4, 5)), ("log.usage.recorded.v2.beta", (6, 6))]
    first_two = msgspec.json.decode(held[0].data, type=list[msgspec.Raw])
    assert [decode_event(e).request_id for e in first_two] == ["r1", "r2"]
    [raw] = msgspec.json.decode(held[1].data, type=list[msgspec.Raw])
    marker = marker_of(raw)
    assert (marker.event_id, marker.event_type, marker.position, marker.max_payload, marker.withheld_by, marker.tenant) == (
        too_large.event_id, subjects.USAGE_RECORDED, 3, MAX_PAYLOAD, FEED, "acme")
    assert marker.size_bytes > MAX_PAYLOAD
    assert WITHHELD.labels("feed")._value.get() == counted + 1
    [warned] = [x for x in logs if x["event"] == "feed.withheld_oversized"]
    assert (warned["position"], warned["event_id"], warned["size_bytes"], warned["log_level"]) == (
        3, str(too_large.event_id), marker.size_bytes, "warning")
    assert SECRET not in json.dumps(logs, default=str)

    # another replica's feed finds the stream holding it all: nothing again, nothing counted twice
    assert await LogFeed(pool, nats_client).publish() == 0
    assert WITHHELD.labels("feed")._value.get() == counted + 1


async def test_a_replay_page_carries_a_marker_in_place_of_a_row_too_large(metering: Metering, nats_client) -> None:
    too_large = big_usage(2, "acme")
    head = await metering.append([usage(1, "acme"), too_large, usage(3, "acme")])
    counted = WITHHELD.labels("replay")._value.get()
    for subject in (subjects.METERING_REPLAY, f"{subjects.METERING_REPLAY}.acme"):
        with structlog.testing.capture_logs() as logs:
            body = await natsio.request(nats_client, subject, msgspec.json.encode(ReplayRequest(types=["usage"])), 10)
        page = msgspec.json.decode(body, type=ReplayPage)
        assert page.positions == [1, 2, 3] and page.last == head and page.live is not None
        first, withheld, third = page.events
        assert decode_event(first).request_id == "r1" and decode_event(third).request_id == "r3"
        marker = marker_of(withheld)
        assert (marker.event_id, marker.event_type, marker.position, marker.max_payload, marker.withheld_by,
                marker.tenant) == (too_large.event_id, subjects.USAGE_RECORDED, 2, MAX_PAYLOAD,
                                   subjects.METERING_REPLAY, "acme")
        assert marker.size_bytes > MAX_PAYLOAD
        assert [x["position"] for x in logs if x["event"] == "replay.withheld_oversized"] == [2]
        assert SECRET not in json.dumps(logs, default=str)
    assert WITHHELD.labels("replay")._value.get() == counted + 2        # once per page that held it


async def test_a_page_never_exceeds_max_payload_however_rows_are_sized(metering: Metering, nats_client) -> None:
    # about a page each, two that fit only alone, two that fit no page, and small ones around them
    sizes = [300, 9000, 15_500, 16_100, 16_900, 8000, 8000, 8000, 40_000, 200, *[700] * 60, 15_000]
    head = await metering.append(big_usage(i, "acme", size) for i, size in enumerate(sizes))
    read: list[tuple[int, bytes]] = []
    after = 0
    while True:
        body = await natsio.request(nats_client, subjects.METERING_REPLAY,
                                    msgspec.json.encode(ReplayRequest(after=after, max_events=10_000)), 10)
        assert len(body) <= MAX_PAYLOAD
        page = msgspec.json.decode(body, type=ReplayPage)
        read += zip(page.positions, map(bytes, page.events))
        after = page.last
        if page.live is not None:
            break
    assert [position for position, _ in read] == list(range(1, head + 1))
    withheld = [position for position, event in read if b'"event.withheld.v1"' in event]
    assert withheld == [5, 9]                           # 16,900 and 40,000 bytes as stored: no page carries them
    assert [decode_event(event).input_tokens for position, event in read if position not in withheld] == [
        i for i in range(len(sizes)) if i + 1 not in withheld]


async def test_a_subscriber_is_handed_the_marker_at_the_rows_position_and_can_fetch_the_row_later(
        metering: Metering, nats_client, pool, own_database: str, own_nats: str) -> None:  # noqa: F811 — fixtures
    got: list[tuple[int, UsageRecorded | EventWithheld]] = []

    async def apply(conn, batch) -> None:
        got.extend(batch)

    await feeding(pool)
    caught_up, live = big_usage(2, "acme"), big_usage(5, "acme")
    head = await metering.append([usage(1, "beta"), caught_up, usage(3, "beta")])
    subscriber = Subscriber("withheld", apply, nc=nats_client, database_url=own_database, types=["usage"])
    async with running(subscriber):
        assert await subscriber.position.reach(head, 30)
        assert await metering.feed.position.reach(head, 20)
        head = await metering.append([usage(4, "beta"), live, usage(6, "beta")])
        assert await subscriber.position.reach(head, 30)
        assert subscriber.switches == 1                  # positions 1-3 came by replay, 4-6 by LOG
        assert [p for p, _ in got] == [1, 2, 3, 4, 5, 6]
        assert [e.request_id for p, e in got if p not in (2, 5)] == ["r1", "r3", "r4", "r6"]
        assert [(e.position, e.event_id, e.event_type, e.tenant, e.withheld_by) for p, e in got if p in (2, 5)] == [
            (2, caught_up.event_id, subjects.USAGE_RECORDED, "acme", subjects.METERING_REPLAY),
            (5, live.event_id, subjects.USAGE_RECORDED, "acme", FEED)]

        # read again while the limit is what it is: the marker again; a row that fits: the event
        again = await subscriber.fetch(5)
        assert isinstance(again, EventWithheld) and again.event_id == live.event_id
        assert (await subscriber.fetch(4)).request_id == "r4"
        with pytest.raises(ServiceError) as beyond:
            await subscriber.fetch(head + 5)
        assert (beyond.value.status, beyond.value.body.message) == (409, f"position {head + 5} is beyond the log's head")

    # a metering whose NATS server carries the row (its max_payload the default): fetch reads it whole
    roomy = await natsio.connect(own_nats, "oversized-log-roomy", 10)
    service = await natsio.serve(roomy, "metering", {}, by_subject={
        door.SUBJECT: functools.partial(door.on_request, history.History(pool, roomy, feeding=False))})
    try:
        fetched = await Subscriber("withheld", apply, nc=roomy, pool=pool, types=["usage"]).fetch(5)
        assert fetched == live
        assert await Subscriber("withheld", apply, nc=roomy, pool=pool, types=["tenant"]).fetch(5) is None
    finally:
        await service.stop()  # type: ignore[attr-defined]
        await roomy.close()


async def test_the_tenant_spend_example_notes_a_withheld_row_and_reports_it(
        metering: Metering, nats_client, own_database: str, capsys) -> None:  # noqa: F811 — a fixture
    spec = importlib.util.spec_from_file_location("tenant_spend", REPO / "examples" / "tenant_spend.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    head = await metering.append([usage(1, "acme"), big_usage(2, "acme"), usage(3, "acme")])
    conn = await asyncpg.connect(own_database)
    try:
        await conn.execute(example.SCHEMA)
        subscriber = Subscriber("spend", example.apply, nc=nats_client, database_url=own_database, types=example.TYPES)
        async with running(subscriber):
            assert await subscriber.position.reach(head, 30)
        assert await conn.fetchval("SELECT calls FROM tenant_spend WHERE tenant = 'acme'") == 2
        assert [tuple(r) for r in await conn.fetch("SELECT position, type, tenant FROM tenant_spend_withheld")] == [
            (2, subjects.USAGE_RECORDED, "acme")]
    finally:
        await conn.close()
    assert await example.report(own_database) == 0
    printed = capsys.readouterr().out
    assert "not counted: 1 row(s) of the log too large for one NATS message, at positions 2 (usage.recorded.v2, " \
        "tenant acme)" in printed
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("tenant "))
    assert lines[header].split()[:4] == ["tenant", "calls", "errors", "unpriced"]
    assert lines[header + 1].split()[:4] == ["acme", "2", "0", "2"]             # the test's models have no price
