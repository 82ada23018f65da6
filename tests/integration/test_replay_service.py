"""Metering's replay of the log over NATS and the log's feed on LOG, on a NATS server of this module's own: pages
cover the log once, filters by type and tenant, a start from a time, pages published where the caller says, and
a hand-over to the stream at the head that neither skips nor repeats an event."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import timedelta

import msgspec
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_event
from switchyard_gateway.contracts.events import KeyIssued, TenantCreated
from switchyard_gateway.contracts.metering import ReplayPage, ReplayRequest
from switchyard_gateway.contracts.users import UserCreated, UserPasswordChanged
from switchyard_gateway.events.feed import positions_of
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.natsio import ServiceError
from tests.conftest import wait_for
from tests.integration.logharness import T0, Metering, log_messages, usage

async def page(nc, subject: str = subjects.METERING_REPLAY, **ask) -> ReplayPage:
    body = await natsio.request(nc, subject, msgspec.json.encode(ReplayRequest(**ask)), 10)
    return msgspec.json.decode(body, type=ReplayPage)


async def read_all(nc, subject: str = subjects.METERING_REPLAY, after: int = 0, **ask) -> tuple[list[int], ReplayPage]:
    positions: list[int] = []
    start = {"after": after} if after or "since" not in ask else {"since": ask.pop("since")}
    while True:
        got = await page(nc, subject, **start, **ask)
        positions += got.positions
        start = {"after": got.last}
        if got.live is not None:
            return positions, got


async def test_pages_cover_the_log_once_in_order_and_hand_over_at_the_head(metering: Metering, nats_client) -> None:
    head = await metering.append(usage(i, f"t{i % 3}") for i in range(2500))
    positions, last = await read_all(nats_client, max_events=700)
    assert positions == list(range(1, head + 1))
    assert last.last == last.head == head
    assert last.live is not None and last.live.stream == subjects.STREAM_LOG and last.live.subjects == ["log.>"]
    first = await page(nats_client, max_events=700)
    assert len(first.events) == 700 and first.live is None and first.last == first.positions[-1]
    assert [decode_event(bytes(e)).request_id for e in first.events[:2]] == ["r0", "r1"]


async def test_a_page_is_bounded_in_bytes_and_still_moves(metering: Metering, nats_client) -> None:
    await metering.append(usage(i, "acme") for i in range(50))
    got = await page(nats_client, max_events=50, max_bytes=1)
    assert len(got.events) == 1 and got.last == 1 and got.live is None


async def test_types_and_the_tenant_subject_filter_and_live_subjects_follow(metering: Metering, nats_client) -> None:
    await metering.append([TenantCreated(tenant_id="acme"), TenantCreated(tenant_id="beta"),
                           KeyIssued(key_id="sy_1", tenant_id="acme", key_sha256="00" * 32),
                           usage(1, "acme"), usage(2, "beta"), usage(3, "acme")])
    tenant_events, last = await read_all(nats_client, f"{subjects.METERING_REPLAY}.acme")
    assert tenant_events == [1, 3, 4, 6]
    assert last.live.subjects == ["log.*.*.*.acme"]
    usage_of_acme, last = await read_all(nats_client, f"{subjects.METERING_REPLAY}.acme", types=["usage"])
    assert usage_of_acme == [4, 6] and last.live.subjects == ["log.usage.*.*.acme"]
    created, last = await read_all(nats_client, types=["tenant.created.v1", "key"])
    assert created == [1, 2, 3] and last.live.subjects == ["log.tenant.created.v1.*", "log.key.*.*.*"]
    # a prefix another covers, or named twice, is read once: live subjects that overlap were refused by `follow`
    covered, last = await read_all(nats_client, types=["key.issued.v1", "usage", "key", "usage.recorded.v2", "usage"])
    assert covered == [3, 4, 5, 6] and last.live.subjects == ["log.usage.*.*.*", "log.key.*.*.*"]
    # a prefix is whole tokens: `tenant.c` is not `tenant.created`
    assert (await read_all(nats_client, types=["tenant.c"]))[0] == []


async def test_since_starts_at_the_first_event_that_occurred_then(metering: Metering, nats_client) -> None:
    await metering.append(usage(i, "acme", T0 + timedelta(minutes=i)) for i in range(10))
    positions, _ = await read_all(nats_client, since=T0 + timedelta(minutes=6, seconds=30))
    assert positions == [8, 9, 10]
    assert (await read_all(nats_client, since=T0 + timedelta(days=1)))[0] == []


async def test_a_page_goes_to_the_subject_the_caller_names(metering: Metering, nats_client) -> None:
    await metering.append(usage(i, "acme") for i in range(3))
    inbox = await nats_client.subscribe("replay.billing.pages", max_msgs=1)
    answer = await natsio.request(nats_client, subjects.METERING_REPLAY,
                                  msgspec.json.encode(ReplayRequest(deliver_to="replay.billing.pages")), 10)
    assert answer == b""
    delivered = msgspec.json.decode((await inbox.next_msg(10)).data, type=ReplayPage)
    assert delivered.positions == [1, 2, 3] and delivered.live is not None


@pytest.mark.parametrize(("ask", "field"), [
    ({"deliver_to": "usage.recorded.v2.acme"}, "deliver_to"),        # never onto a stream's subject
    ({"deliver_to": "_INBOX.>"}, "deliver_to"),
    ({"max_events": 0}, "max_events"),
    ({"max_events": 10_001}, "max_events"),
    ({"types": ["usage.*"]}, "types"),
    ({"types": ["usage"] * 65}, "types"),                           # a page's own fields stay small
    ({"types": ["u" * 65]}, "types"),
    ({"after": -1}, "after"),
    ({"max_bytes": -5}, "max_bytes"),
    ({"after": 3, "since": T0}, "after"),                           # one or the other: neither wins silently
    ({"after": 0, "since": T0}, "after"),
    # the asker's client uses `_INBOX`: another's inbox (a subscriber's `_INBOX_<user>`) is not for it to fill
    ({"deliver_to": "_INBOX_billing.pages"}, "deliver_to"),
])
async def test_bad_requests_are_refused_with_the_field(metering: Metering, nats_client, ask: dict, field: str) -> None:
    with pytest.raises(ServiceError) as refused:
        await page(nats_client, **ask)
    assert refused.value.status == 400 and refused.value.body.field == field


async def test_a_position_beyond_the_head_is_a_conflict(metering: Metering, nats_client) -> None:
    await metering.append([usage(1, "acme")])
    with pytest.raises(ServiceError) as refused:
        await page(nats_client, after=5)
    assert refused.value.status == 409 and refused.value.body.code == "AHEAD_OF_LOG"


async def test_the_feed_publishes_the_log_in_order_with_positions_per_type_and_tenant(metering: Metering,
                                                                                      nats_client, pool) -> None:
    await metering.append([TenantCreated(tenant_id="acme"), *(usage(i, "acme") for i in range(3))])
    with contextlib.suppress(RuntimeError):                 # positions drawn and rolled back: a gap in the log
        async with pool.acquire() as conn, conn.transaction():
            await eventlog.append(conn, [usage(i, "acme") for i in range(100, 102)])
            raise RuntimeError("rolled back")
    head = await metering.append([usage(3, "acme"), usage(9, "beta"), TenantCreated(tenant_id="beta")])
    assert await metering.feed.position.reach(head, 10)
    msgs = await log_messages(nats_client)
    assert [(m.subject, positions_of(m.headers)) for m in msgs] == [
        ("log.tenant.created.v1.acme", (1, 1)), ("log.usage.recorded.v2.acme", (2, 4)),
        ("log.usage.recorded.v2.acme", (7, 7)),              # not one message across the gap: 5 and 6 are not in the log
        ("log.usage.recorded.v2.beta", (8, 8)), ("log.tenant.created.v1.beta", (9, 9))]
    assert [e["request_id"] for e in msgspec.json.decode(msgs[1].data)] == ["r0", "r1", "r2"]


async def test_the_feed_holds_the_same_subscriptions_however_many_rounds_it_publishes(metering: Metering,
                                                                                     nats_client) -> None:
    """Each round publishes with acks to an inbox; a round must not leave a subscription behind (one per round
    grew metering's memory and NATS's without bound under load)."""
    head = await metering.append([usage(0, "acme")])
    assert await metering.feed.position.reach(head, 10)
    held = len(nats_client._subs)                       # the client's live subscriptions
    for i in range(1, 31):                              # thirty commits, thirty rounds
        head = await metering.append([usage(i, "acme")])
        assert await metering.feed.position.reach(head, 10)
    assert len(nats_client._subs) == held


async def test_the_feed_resumes_from_what_the_stream_holds_after_losing_its_place(metering: Metering,
                                                                                  nats_client, pool) -> None:
    head = await metering.append(usage(i, "acme") for i in range(5))
    assert await metering.feed.position.reach(head, 10)
    async with pool.acquire() as conn:      # as if it died after publishing, before its checkpoint committed
        await conn.execute("UPDATE projection_checkpoints SET position = 0 WHERE projection = 'log.feed'")
    metering.feed._tail = None
    head = await metering.append(usage(i, "acme") for i in range(5, 8))
    assert await metering.feed.position.reach(head, 10)
    held = [positions_of(m.headers) for m in await log_messages(nats_client)]
    assert held == [(1, 5), (6, 8)]                  # nothing published twice


async def test_going_live_at_the_handed_sequence_misses_and_repeats_nothing_while_events_keep_coming(
        metering: Metering, nats_client) -> None:
    await metering.append(usage(i, "acme") for i in range(300))

    async def writer() -> None:
        for i in range(300, 600, 10):
            await metering.append(usage(j, "acme") for j in range(i, i + 10))
            await asyncio.sleep(0.005)

    writing = asyncio.ensure_future(writer())
    seen, last = await read_all(nats_client, max_events=50)
    position = last.last
    js = nats_client.jetstream()
    sub = await js.subscribe(last.live.subjects[0], ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                   opt_start_seq=last.live.sequence))
    await writing
    while position < 600:
        msg = await sub.next_msg(10)
        first, _ = positions_of(msg.headers)
        for offset, _event in enumerate(msgspec.json.decode(msg.data)):
            if first + offset > position:
                seen.append(first + offset)
                position = first + offset
    assert seen == list(range(1, 601))
    await sub.unsubscribe()



async def test_credential_hashes_are_blanked_for_the_logs_outside_readers(metering: Metering, nats_client,
                                                                           pool) -> None:
    """A user's Argon2 hash in `user.created.v1` was read by every subscriber of its tenant (and cracked offline);
    a key's SHA-256 too. Replay pages and the LOG stream carry the events with those fields blanked; the log
    itself keeps them (the registry rebuilds its users and keys from it)."""
    secret_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"
    head = await metering.append([
        UserCreated(username="alice", tenant_id="acme", password_hash=secret_hash),
        UserPasswordChanged(username="alice", tenant_id="acme", password_hash=secret_hash),
        KeyIssued(key_id="sy_1", tenant_id="acme", key_sha256="ab" * 32), usage(1, "acme")])
    pages = await page(nats_client, max_events=10)
    assert len(pages.events) == 4
    replayed = [decode_event(bytes(e)) for e in pages.events]
    assert [getattr(e, "password_hash", None) for e in replayed[:2]] == ["", ""] and replayed[2].key_sha256 == ""
    assert replayed[3].request_id == "r1"                 # other events as they are
    assert await metering.feed.position.reach(head, 10)
    fed = b"".join(m.data for m in await log_messages(nats_client))
    assert b"argon2id" not in fed and b"ab" * 32 not in fed and b'"password_hash":""' in fed.replace(b" ", b"")
    async with pool.acquire() as conn:                    # the log keeps them
        kept = await conn.fetchval("SELECT payload::text FROM events WHERE type = 'user.created.v1'")
    assert secret_hash in kept



async def test_a_nul_in_an_event_with_a_credential_neither_stops_the_feed_nor_fools_the_blanking(
        metering: Metering, nats_client) -> None:
    """The blanking went through jsonb, which refuses a string holding \\u0000: one key named with a NUL stopped the
    LOG stream's feed for good and failed every replay page across it. A name that spells the field out must not
    be taken for it either."""
    hostile = 'a\x00"key_sha256":"ffff\\'
    head = await metering.append([
        KeyIssued(key_id="sy_nul", tenant_id="acme", key_sha256="cd" * 32, name=hostile), usage(1, "acme")])
    pages = await page(nats_client, max_events=10)
    replayed = [decode_event(bytes(e)) for e in pages.events]
    assert [type(e).__name__ for e in replayed] == ["KeyIssued", "UsageRecorded"]
    assert replayed[0].key_sha256 == "" and replayed[0].name == hostile
    assert await metering.feed.position.reach(head, 10)
    fed = b"".join(m.data for m in await log_messages(nats_client))
    assert b"cd" * 32 not in fed and b"sy_nul" in fed and b'"request_id":"r1"' in fed.replace(b" ", b"")


async def test_a_page_may_go_to_the_askers_own_inbox(metering: Metering, nats_client) -> None:
    await metering.append(usage(i, "acme") for i in range(2))
    own = f"{nats_client._inbox_prefix.decode()}.pages.{uuid.uuid4().hex[:6]}"      # noqa: SLF001
    inbox = await nats_client.subscribe(own, max_msgs=1)
    assert await natsio.request(nats_client, subjects.METERING_REPLAY,
                                msgspec.json.encode(ReplayRequest(deliver_to=own)), 10) == b""
    assert msgspec.json.decode((await inbox.next_msg(10)).data, type=ReplayPage).positions == [1, 2]


async def test_a_request_whose_reply_subject_is_no_inbox_is_not_answered(metering: Metering, nats_client) -> None:
    """A reply subject is the asker's to choose, and a service answers as the services' user, who may publish
    anywhere: an outside subscriber asking with its reply set to a stream's subject (`provider.registered.v1.x`)
    had the page stored in REGISTRY. Only inboxes are answered; a nested body is a 400, not a 500."""
    await metering.append([usage(1, "acme")])
    forged = "provider.registered.v1.evil"
    landed = await nats_client.subscribe(forged)
    before = natsio.REFUSED_REPLIES.labels("metering")._value.get()          # noqa: SLF001
    await nats_client.publish(f"{subjects.METERING_REPLAY}.acme", msgspec.json.encode(ReplayRequest()), reply=forged)
    await nats_client.flush()
    await wait_for(lambda: natsio.REFUSED_REPLIES.labels("metering")._value.get() > before, 10,  # noqa: SLF001
                   what="the forged request to be refused")
    assert (await page(nats_client, f"{subjects.METERING_REPLAY}.acme")).events     # an inbox is answered
    with pytest.raises(asyncio.TimeoutError):
        await landed.next_msg(timeout=0.2)
    with pytest.raises(ServiceError) as nested:
        await natsio.request(nats_client, subjects.METERING_REPLAY, b'{"types":' + b"[" * 5000 + b"]" * 5000 + b"}", 10)
    assert nested.value.status == 400
