"""A row of the log too large for one NATS message (on a NATS server of this module's own, its max_payload 16 KiB)
stops neither metering's LOG feed nor replay: each sends an `event.withheld.v1` marker in the row's place, in log
order, and goes on; a replay page never exceeds max_payload whatever its rows."""

from __future__ import annotations

import json

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
from tests.conftest import wait_for
from tests.integration.logharness import Metering, log_messages, usage
from tests.integration.test_outbox_oversized import MAX_PAYLOAD, SECRET, small_nats  # noqa: F401 — a fixture


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
    assert (marker.event_id, marker.event_type, marker.position, marker.max_payload, marker.outbox, marker.tenant) == (
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
        assert (marker.event_id, marker.event_type, marker.position, marker.max_payload, marker.outbox,
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
