"""NATS decides who may replay the log: a NATS server started with the users `libs/kit/nats_auth.py` writes (the
configuration `switchyard up --nats-users` gives it). A subscriber's user can catch up and follow with nothing but
its allow lists; a tenant's user gets that tenant's events only; NATS refuses everything else they try."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.contracts.deadletters import EventDeadLettered
from switchyard_gateway.contracts.metering import Follow, ReplayPage, ReplayRequest, SetAside
from switchyard_gateway.contracts.subjects import subscriber_subject as door_subject
from switchyard_gateway.events.door import Door
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import NotAuthorized, NotPermitted, ServiceError
from switchyard_gateway.kit.nats_auth import SubscriberUser, UsersError, inbox_prefix, load, server_config, with_user
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.services.metering import door as door_service
from switchyard_gateway.services.metering import history
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import create_database
from tests.integration.logharness import Metering, usage

SERVICES_PASSWORD = "services-secret"
USERS = [SubscriberUser("billing", "billing-secret", "tenant-spend"),
         SubscriberUser("acme-bi", "acme-secret", "acme-spend", tenant="acme")]


@contextlib.contextmanager
def guarded_stack(urls, stack_root: Path, name: str, services_password: str,
                  users: list[SubscriberUser]) -> Iterator[tuple[EmbeddedStack, Path]]:
    """A NATS server of a module's own, started with the users `nats_auth.server_config` writes, and its file."""
    root = stack_root / f"{name}-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    config = root / "auth.conf"
    config.write_text(server_config(services_password, users))
    with EmbeddedStack(root / "stack", database_url=urls.database_url, redis_url=urls.redis_url, durable=False,
                       nats_config=config) as running:
        yield running, config


@pytest.fixture(scope="module")
def guarded_nats(urls, stack_root: Path) -> Iterator[str]:
    with guarded_stack(urls, stack_root, "nats-auth", SERVICES_PASSWORD, USERS) as (running, _):
        yield running.urls.nats_url


@pytest.fixture
async def services(guarded_nats: str, pool, database_url: str):
    nc = await natsio.connect(with_user(guarded_nats, "switchyard", SERVICES_PASSWORD), "metering", 10)
    harness = Metering(nc, pool, database_url)
    await harness.start()
    yield harness
    await harness.stop()
    await nc.close()


@pytest.fixture
async def acme(guarded_nats: str, services: Metering):
    """A client of the tenant-held user `acme-bi` and its door; every consumer the door made for it goes at the end."""
    nc = await Refusals().connect(guarded_nats, "acme-bi", "acme-secret")
    yield nc, Door(nc, user="acme-bi", name="acme-spend", tenant="acme", timeout_s=10)
    js = services.nc.jetstream()
    for stream in (subjects.STREAM_LOG, subjects.STREAM_DEADLETTER):
        for consumer in await js.consumers_info(stream):
            if consumer.name.startswith(ACME_CONSUMERS):
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, consumer.name)
    await nc.close()


ACME_CONSUMERS = "sub7_acme-bi_"          # the names of the consumers metering makes for user acme-bi


class Refusals:
    """A client of one user that keeps what the server refused it."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def connect(self, url: str, user: str, password: str) -> nats.NATS:
        async def keep(exc: Exception) -> None:
            self.errors.append(str(exc))
        return await nats.connect(with_user(url, user, password), error_cb=keep, inbox_prefix=inbox_prefix(user),
                                  allow_reconnect=False)

    async def refused(self, what: str) -> bool:
        for _ in range(100):
            if any(what.lower() in error.lower() for error in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


async def test_a_subscriber_user_catches_up_and_follows_with_only_its_allow_lists(
        guarded_nats: str, services: Metering, urls) -> None:
    await services.append([TenantCreated(tenant_id="acme"), TenantCreated(tenant_id="beta"),
                           *(usage(i, ("acme", "beta")[i % 2]) for i in range(40))])
    # types one of which covers another: the page's live subjects overlapped, the door refused to follow them, and
    # the kit never went live
    everyone = Subscriber("tenant-spend", _nothing, nats_url=with_user(guarded_nats, "billing", "billing-secret"),
                          types=["usage", "tenant", "usage.recorded.v2"],
                          database_url=await create_database(urls.database_url, f"p_{uuid.uuid4().hex[:10]}"))
    acme_seen: list[str] = []

    async def acme(_conn, batch) -> None:
        acme_seen.extend(e.tenant for _, e in batch)

    one = Subscriber("acme-spend", acme, nats_url=with_user(guarded_nats, "acme-bi", "acme-secret"), tenant="acme",
                     types=["usage", "tenant"],
                     database_url=await create_database(urls.database_url, f"p_{uuid.uuid4().hex[:10]}"))
    tasks = [asyncio.ensure_future(s.run()) for s in (everyone, one)]
    try:
        for subscriber in (everyone, one):
            await asyncio.wait_for(subscriber.live.wait(), 20)
        head = await services.append([usage(100, "beta"), usage(101, "acme")])
        assert await everyone.position.reach(head, 20)
        assert await one.position.reach(head, 20)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert everyone.applied == head and set(acme_seen) == {"acme"} and len(acme_seen) == 22


@pytest.mark.parametrize(("user", "password", "name", "refused", "says"), [
    ("billing", "not-its-password", "tenant-spend", NotAuthorized, "refused the user billing: Authorization Violation"),
    ("nobody", "billing-secret", "tenant-spend", NotAuthorized, "refused the user nobody"),
    ("billing", "billing-secret", "not-its-name", NotPermitted, "may use only the door of the name and tenant"),
])
async def test_a_subscriber_nats_refuses_ends_saying_why_rather_than_waiting_for_metering(
        guarded_nats: str, services: Metering, urls, user: str, password: str, name: str, refused: type,
        says: str) -> None:
    """A wrong password, an unknown user or a name its users file does not give it: the kit tried again for ever
    (30 s of "did not answer", or "503 metering is not answering" again and again), as if metering were down."""
    subscriber = Subscriber(name, _nothing, nats_url=with_user(guarded_nats, user, password), request_timeout_s=1,
                            database_url=await create_database(urls.database_url, f"p_{uuid.uuid4().hex[:10]}"))
    with pytest.raises(refused) as ended:
        await asyncio.wait_for(subscriber.run(), 5)
    assert says in str(ended.value)


async def test_nats_refuses_a_user_what_it_is_not_allowed(guarded_nats: str, services: Metering) -> None:
    await services.append([usage(1, "acme"), usage(2, "beta")])
    client = Refusals()
    nc = await client.connect(guarded_nats, "acme-bi", "acme-secret")
    try:
        own = await nc.request(door_subject("acme-bi", "acme-spend", "acme", "replay"),
                               msgspec.json.encode(ReplayRequest()), timeout=10)
        assert msgspec.json.decode(own.data, type=ReplayPage).positions == [1]
        for subject in (door_subject("acme-bi", "acme-spend", None, "replay"),      # everyone's
                        door_subject("acme-bi", "acme-spend", "beta", "replay"),    # another tenant's
                        door_subject("acme-bi", "tenant-spend", "acme", "replay"),  # under another name
                        door_subject("billing", "tenant-spend", None, "replay"),    # as another user
                        subjects.METERING_REPLAY, f"{subjects.METERING_REPLAY}.acme"):   # around the door
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, msgspec.json.encode(ReplayRequest()), timeout=1)
            assert await client.refused(f'permissions violation for publish to "{subject}"'), client.errors
        with pytest.raises(nats.errors.TimeoutError):          # a consumer of its own tenant's events, made itself
            await nc.jetstream(timeout=1).add_consumer(subjects.STREAM_LOG, ConsumerConfig(
                name=f"x-{uuid.uuid4().hex[:6]}", filter_subject="log.*.*.*.acme", ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL, deliver_subject=nc.new_inbox()))
        assert await client.refused("permissions violation for publish to \"$JS.API.CONSUMER.CREATE.LOG")
        await nc.subscribe("_INBOX_billing.>")                  # another user's replies
        assert await client.refused('permissions violation for subscription to "_INBOX_billing.>"')
        for subject in ("usage.recorded.v2.acme", "event.dead_lettered.v1.acme-spend"):   # made-up usage; a letter
            await nc.publish(subject, b"{}")
            assert await client.refused(f'permissions violation for publish to "{subject}"')
    finally:
        await nc.close()
    with pytest.raises(nats.errors.Error):
        await Refusals().connect(guarded_nats, "acme-bi", "not-the-password")


async def test_no_answer_of_the_services_or_jetstream_lands_where_a_subscriber_points_it(
        guarded_nats: str, services: Metering) -> None:
    """A subscriber's user could make consumers and publish dead letters itself, and JetStream answers on whatever
    reply subject a request names: a consumer's creation with its reply set to `usage.<x>` was stored in USAGE (and
    metering's usage ingest set it aside as a dead letter). Now a subscriber asks metering, which answers only on
    the asking user's own inbox: pointed at a stream's subject or another user's inbox, nothing is sent at all."""
    await services.append([usage(1, "acme")])
    js = services.nc.jetstream()
    stored = (await js.stream_info(subjects.STREAM_USAGE)).state.last_seq
    billing = await Refusals().connect(guarded_nats, "billing", "billing-secret")
    overheard: list[bytes] = []

    async def overhear(msg) -> None:
        overheard.append(msg.data)

    await billing.subscribe("_INBOX_billing.>", cb=overhear)
    await billing.flush()
    client = Refusals()
    nc = await client.connect(guarded_nats, "acme-bi", "acme-secret")
    refused = natsio.REFUSED_REPLIES.labels("metering")
    before = refused._value.get()
    try:
        # the old way: JetStream's own answer to a consumer's creation, sent to a stream's subject
        await nc.publish(f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_LOG}", b"{}", reply="usage.forged.acme")
        assert await client.refused("permissions violation for publish to \"$JS.API.CONSUMER.CREATE.LOG")
        follow = msgspec.json.encode(Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], "_INBOX_acme-bi.tail"))
        for reply in ("usage.forged.acme", "_INBOX_billing.forged", "_INBOX.forged"):
            await nc.publish(door_subject("acme-bi", "acme-spend", "acme", "replay"), msgspec.json.encode(
                ReplayRequest()), reply=reply)
            await nc.publish(door_subject("acme-bi", "acme-spend", "acme", "follow"), follow, reply=reply)
        await nc.flush()
        assert await wait_for(lambda: refused._value.get() - before >= 6, 10)
        await billing.flush()
        assert overheard == []
        assert (await js.stream_info(subjects.STREAM_USAGE)).state.last_seq == stored
        assert not [c for c in await js.consumers_info(subjects.STREAM_LOG) if c.name.startswith(ACME_CONSUMERS)]
    finally:
        await nc.close()
        await billing.close()


async def test_metering_makes_a_subscribers_consumers_within_its_door_and_no_more_than_its_share(
        guarded_nats: str, services: Metering, acme) -> None:
    """What a subscriber asks of its door is held to what the subject allows: deliveries under its own inbox,
    filters within its tenant, retries and dead letters of its own name, consumers of its own, at most 8 at once."""
    nc, door = acme
    js = services.nc.jetstream()
    made: list[str] = []
    refusals = [
        (Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], "_INBOX_billing.x"), "deliver_to"),
        (Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], "registry.command.v1"), "deliver_to"),
        (Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], "_INBOX_acme-bi.*"), "deliver_to"),
        (Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.beta"], "_INBOX_acme-bi.x"), "subjects"),
        (Follow(subjects.STREAM_LOG, 1, ["log.>"], "_INBOX_acme-bi.x"), "subjects"),
        (Follow(subjects.STREAM_LOG, 1, ["log.usage.recorded.v2.acme.more"], "_INBOX_acme-bi.x"), "subjects"),
        (Follow(subjects.STREAM_DEADLETTER, 1, ["event.retry_requested.v1.tenant-spend"], "_INBOX_acme-bi.x"),
         "subjects"),
        (Follow(subjects.STREAM_USAGE, 1, ["usage.>"], "_INBOX_acme-bi.x"), "stream"),
        (Follow(subjects.STREAM_LOG, 0, ["log.*.*.*.acme"], "_INBOX_acme-bi.x"), "sequence"),
        (Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], "_INBOX_acme-bi.x", heartbeat_s=0.001), "heartbeat_s"),
    ]
    for ask, field in refusals:
        with pytest.raises(ServiceError) as refused:
            await door.follow(ask)
        assert (refused.value.status, refused.value.body.field) == (400, field), ask
    for _ in range(8):
        made.append(await door.follow(Follow(subjects.STREAM_LOG, 1, ["log.usage.*.*.acme"], nc.new_inbox())))
    with pytest.raises(ServiceError) as crowded:
        await door.follow(Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], nc.new_inbox()))
    assert crowded.value.status == 429 and crowded.value.body.code == "TOO_MANY_CONSUMERS"
    info = await js.consumer_info(subjects.STREAM_LOG, made[0])
    assert info.config.deliver_subject.startswith("_INBOX_acme-bi.") and info.config.durable_name is None
    assert info.config.mem_storage and info.config.inactive_threshold == 30.0
    assert info.config.filter_subject == "log.usage.*.*.acme"

    billing = await Refusals().connect(guarded_nats, "billing", "billing-secret")
    try:                                        # another user can neither stop them nor store under acme's name
        other = Door(billing, user="billing", name="tenant-spend", tenant=None, timeout_s=5)
        with pytest.raises(ServiceError) as theirs:
            await other.unfollow(subjects.STREAM_LOG, made[0])
        assert theirs.value.status == 403
        letter = EventDeadLettered(consumer="acme-spend", stage="apply", error="x", source="log")
        with pytest.raises(ServiceError) as forged:
            await other.set_aside(letter, "acme-spend:log:1:apply:")
        assert forged.value.status == 403
    finally:
        await billing.close()
    gone = made.pop(0)
    await door.unfollow(subjects.STREAM_LOG, gone)
    assert gone not in [c.name for c in await js.consumers_info(subjects.STREAM_LOG)]
    made.append(await door.follow(Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], nc.new_inbox())))

    letter = EventDeadLettered(consumer="acme-spend", stage="apply", error="boom", source="log", sequence=7)
    sequence = await door.set_aside(letter, "acme-spend:log:7:apply:")
    assert await door.set_aside(letter, "acme-spend:log:7:apply:") == sequence       # stored once
    kept = await js.get_msg(subjects.STREAM_DEADLETTER, sequence)
    assert kept.subject == "event.dead_lettered.v1.acme-spend"


async def wait_for(condition, within_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def _nothing(_conn, _batch) -> None:
    return None


HASH = "$2a$11$" + "abcdefghijklmnopqrstuv" + "0123456789./ABCDEFGHIJKLMNOPQRS"   # a whole bcrypt hash: salt, then hash


def test_a_users_file_takes_passwords_from_the_environment_or_as_hashes_never_in_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("subscribers:\n"
                    "  - {user: billing, password: '${BILLING_PW}', name: tenant-spend}\n"
                    f"  - {{user: acme-bi, password: '{HASH}', name: acme-spend, tenant: acme}}\n")
    users = load(path, {"BILLING_PW": "from-the-environment"})
    assert [(u.user, u.password, u.tenant) for u in users] == [
        ("billing", "from-the-environment", None), ("acme-bi", HASH, "acme")]
    path.write_text("subscribers:\n  - {user: billing, password: hunter2, name: x}\n"
                    "  - {user: switchyard, password: '${NOPE}', name: '', tenant: 'Bad Tenant', colour: red}\n"
                    "  - {user: ops, password: '$2-not-a-whole-hash', name: x}\n")
    with pytest.raises(UsersError) as refused:
        load(path, {})
    text = str(refused.value)
    for problem in ("subscribers[0].password: give it as ${ENV_VAR}", "subscribers[1]: unknown key 'colour'",
                    "subscribers[1].user", "subscribers[1].name", "subscribers[1].tenant",
                    "subscribers[1].password: NOPE is not set",
                    "subscribers[2].password: give it as ${ENV_VAR}"):   # nats-server would take it as plain text
        assert problem in text, problem
    # a subscriber writes dead letters under its name: the services' own consumers' names are not for it
    for name in ("metering", "quota", "gateway", "router", "registry", "spend.outbox", "gateway:REGISTRY",
                 "has space"):
        path.write_text(f"subscribers:\n  - {{user: bi, password: '${{PW}}', name: '{name}'}}\n")
        with pytest.raises(UsersError) as reserved:
            load(path, {"PW": "from-the-environment"})
        assert "subscribers[0].name" in str(reserved.value), name
    for content, needle in ((b"\xff\xfe", "cannot read it"), (b"subscribers: [\n  - x", "not valid YAML at line 2")):
        path.write_bytes(content)
        with pytest.raises(UsersError) as unreadable:
            load(path, {})
        assert needle in str(unreadable.value) and "\n" not in str(unreadable.value)


def test_a_subscribers_password_is_as_long_as_the_services_and_its_name_its_own(tmp_path: Path) -> None:
    """`SHORTPW=x` was accepted and written into nats-server's users (the services' needs 16 characters); two
    subscribers of one name would share one dead-letter and retry subject."""
    path = tmp_path / "users.yaml"
    path.write_text("subscribers:\n  - {user: bi, password: '${SHORTPW}', name: spend}\n"
                    "  - {user: bi2, password: '${LONGPW}', name: spend}\n")
    with pytest.raises(UsersError) as refused:
        load(path, {"SHORTPW": "x", "LONGPW": "long-enough-password"})
    text = str(refused.value)
    assert "subscribers[0].password: SHORTPW holds 1 characters; give at least 16" in text
    assert "subscribers[1].password" not in text and "name 'spend' appears twice" in text


async def test_a_subscriber_refused_its_consumer_keeps_catching_up_and_goes_live_once_it_may(
        guarded_nats: str, services: Metering, urls, acme) -> None:
    """Going live is asked of metering now, and may be refused (the user's consumers all taken, metering away):
    the subscriber stays on the log's pages, trying again with a backoff, and goes live once it may."""
    head = await services.append([usage(i, "acme") for i in range(5)])
    holder, door = acme
    taken = [await door.follow(Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"], holder.new_inbox()))
             for _ in range(8)]
    subscriber = Subscriber("acme-spend", _nothing, nats_url=with_user(guarded_nats, "acme-bi", "acme-secret"),
                            tenant="acme", database_url=await create_database(urls.database_url,
                                                                              f"p_{uuid.uuid4().hex[:10]}"))
    running = asyncio.ensure_future(subscriber.run())
    try:
        assert await subscriber.position.reach(head, 20)
        await asyncio.sleep(1.5)                                   # refused, and refused again: still on pages
        assert not subscriber.live.is_set() and not running.done()
        await door.unfollow(subjects.STREAM_LOG, taken.pop())
        await asyncio.wait_for(subscriber.live.wait(), 20)
        later = await services.append([usage(9, "acme")])
        assert await subscriber.position.reach(later, 20)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_what_a_hostile_subscriber_sends_the_door_cannot_take_metering_off_nats(
        guarded_nats: str, services: Metering, acme) -> None:
    """A letter within a message of the limit grew past it when metering stored it (its defaults, the message id),
    and a refused enum value of 600 KB came back twice in the error: each time the server closed metering's
    connection, for good. Racing follows got 60 consumers past a cap of 8; overlapping filters were a 500 with a
    traceback each."""
    nc, door = acme
    js = services.nc.jetstream()
    limit = nc.max_payload
    letter = EventDeadLettered(consumer="acme-spend", stage="decode", error="", source="log", data=b"d" * 1000)
    deadline = {subjects.DEADLINE_HEADER: f"{time.time() + 10:.3f}"}          # what every request carries
    room = limit - natsio.message_size(msgspec.json.encode(SetAside(letter, "acme-spend:log:1:decode:")), deadline) - 40
    huge = msgspec.structs.replace(letter, error="e" * room)
    sequence = await door.set_aside(huge, "acme-spend:log:1:decode:")
    kept = await js.get_msg(subjects.STREAM_DEADLETTER, sequence)
    stored = msgspec.json.decode(kept.data, type=EventDeadLettered)
    assert len(kept.data) < limit and stored.consumer == "acme-spend"
    # a subscriber's letter is kept small whatever it sends: its error cut (its data was cut to fit, and a 1 MB error
    # with a little data was stored whole: about 1 GiB a name)
    assert len(stored.error) <= 1000 and len(kept.data) < 16 * 1024 and stored.data == letter.data
    echo = msgspec.json.encode({"letter": {**msgspec.to_builtins(letter), "stage": "x" * 600_000},
                                "msg_id": "acme-spend:log:2:decode:"})
    with pytest.raises(ServiceError) as refused:
        await door.ask("set_aside", echo)
    assert refused.value.status == 400
    for name, value in (("source", "USAGE"), ("msg_id", "acme-spend:USAGE:1:decode:")):
        with pytest.raises(ServiceError) as bad:
            ask = letter if name == "msg_id" else msgspec.structs.replace(letter, source=value)
            await door.set_aside(ask, value if name == "msg_id" else "acme-spend:log:3:decode:")
        assert bad.value.status == 400 and bad.value.body.field in (name, f"letter.{name}")
    await asyncio.sleep(0.2)
    assert services.nc.is_connected, "metering kept its connection"

    with pytest.raises(ServiceError) as overlapping:
        await door.follow(Follow(subjects.STREAM_LOG, 1, ["log.usage.*.*.acme", "log.*.*.*.acme"],
                                 nc.new_inbox()))
    assert overlapping.value.status == 400 and overlapping.value.body.field == "subjects"
    results = await asyncio.gather(*(door.follow(Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"],
                                                        nc.new_inbox())) for _ in range(20)),
                                   return_exceptions=True)
    made = [r for r in results if isinstance(r, str)]
    refusals = {(r.status, r.body.code) for r in results if isinstance(r, ServiceError)}
    assert len(made) == 8 and refusals <= {(429, "TOO_MANY_CONSUMERS"), (503, "SERVICE_UNAVAILABLE")}, results
    ours = [c.name for c in await js.consumers_info(subjects.STREAM_LOG) if c.name.startswith(ACME_CONSUMERS)]
    assert sorted(ours) == sorted(made)


async def test_follows_made_by_two_metering_replicas_at_once_stay_within_the_cap(
        guarded_nats: str, services: Metering, acme) -> None:
    """A replica makes one user's follows one at a time, but two replicas counted the user's consumers side by side
    and each made its own: the cap of 8 held per replica, 8 x R in all. Here nothing holds them one at a time (the
    door's `follow` called directly, from two replicas' connections at once)."""
    second = await natsio.connect(with_user(guarded_nats, "switchyard", SERVICES_PASSWORD), "metering-2", 10)
    replicas = [history.History(services.pool, services.nc), history.History(services.pool, second)]
    asker = door_service.asker_of(door_subject("acme-bi", "acme-spend", "acme", "follow"))
    try:
        results = await asyncio.gather(*(
            door_service.follow(replicas[i % 2], asker, Follow(subjects.STREAM_LOG, 1, ["log.*.*.*.acme"],
                                                               f"{asker.inbox}{i}"))
            for i in range(24)), return_exceptions=True)
    finally:
        await second.close()
    made = [r for r in results if isinstance(r, str)]
    refusals = {(r.status, r.body.code) for r in results if not isinstance(r, str)}
    ours = [c.name for c in await services.nc.jetstream().consumers_info(subjects.STREAM_LOG)
            if c.name.startswith(ACME_CONSUMERS)]
    assert 1 <= len(made) <= door_service.MAX_FOLLOWS and refusals == {(429, "TOO_MANY_CONSUMERS")}, results
    assert sorted(ours) == sorted(made)


async def test_subjects_a_subscriber_names_stay_short_and_its_door_answers_it_alone(
        guarded_nats: str, services: Metering, acme) -> None:
    """A replay's 5,000-character `deliver_to`, or a follow's long filter, made metering's own protocol line longer
    than the server allows: the server closed its connection (again and again, one request a second). A request of
    an unknown operation was answered on any inbox (another user's)."""
    nc, door = acme
    refused_replies = natsio.REFUSED_REPLIES.labels("metering")
    for op, body, field in (
            ("replay", ReplayRequest(deliver_to="_INBOX_acme-bi." + "x" * 5000), "deliver_to"),
            ("follow", Follow(subjects.STREAM_LOG, 1, [f"log.{'x' * 4200}.b.c.acme"], "_INBOX_acme-bi.t"),
             "subjects")):
        with pytest.raises(ServiceError) as refused:
            await door.ask(op, msgspec.json.encode(body))
        assert (refused.value.status, refused.value.body.field) == (400, field)
    letter = EventDeadLettered(consumer="acme-spend", stage="apply", error="x", source="log", sequence=2**64)
    with pytest.raises(ServiceError) as out_of_range:
        await door.set_aside(letter, "acme-spend:log:1:apply:")
    assert out_of_range.value.body.field == "letter.sequence"
    before = refused_replies._value.get()
    await nc.publish(door.subject("bogus"), b"{}", reply="_INBOX_billing.victim")      # another user's inbox
    await nc.flush()
    assert await wait_for(lambda: refused_replies._value.get() > before, 10)
    with pytest.raises(ServiceError) as unknown:                                        # its own: answered
        await door.ask("bogus", b"{}")
    assert unknown.value.status == 400
    await asyncio.sleep(0.2)
    assert services.nc.is_connected


async def test_a_subscriber_whose_dead_letters_are_full_waits_at_the_event_and_goes_on_once_there_is_room(
        guarded_nats: str, services: Metering, urls, monkeypatch, acme) -> None:
    """At the cap of dead letters waiting, one more event its `apply` refuses ended the subscriber (a 429). It now
    waits at that event, as through an outage, nothing skipped; a retry (or a removal) makes room. A retried
    letter no longer counts as waiting."""
    from switchyard_gateway.cli import deadletters

    monkeypatch.setattr(door_service, "MAX_LETTERS", 1)
    head = await services.append([usage(i, "acme") for i in range(3)])

    async def refuse_second(_conn, batch) -> None:
        if any(e.request_id == "r1" for _, e in batch):
            raise ValueError("not this one")

    subscriber = Subscriber("acme-spend", refuse_second, nats_url=with_user(guarded_nats, "acme-bi", "acme-secret"),
                            tenant="acme", database_url=await create_database(urls.database_url,
                                                                              f"p_{uuid.uuid4().hex[:10]}"))
    _, door = acme
    await door.set_aside(                                                              # the one letter of room
        EventDeadLettered(consumer="acme-spend", stage="apply", error="earlier", source="log", sequence=99),
        "acme-spend:log:99:apply:")
    running = asyncio.ensure_future(subscriber.run())
    try:
        await asyncio.sleep(3)
        assert not running.done() and subscriber.position.value < head, "waiting at the event, not past it"
        [earlier] = [one for one in await deadletters.read(services.nc, "acme-spend") if one.letter.error == "earlier"]
        await deadletters.send_back(services.nc, earlier)                # retried: no longer waiting
        assert await subscriber.position.reach(head, 30)
        letters = await deadletters.read(services.nc, "acme-spend")
        assert [one.letter.sequence for one in letters] == [99, 2]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_one_subscriber_flooding_the_door_leaves_room_for_the_others(
        guarded_nats: str, services: Metering) -> None:
    """While one user flooded the door, its requests refused as busy still took the door's places one by one, and
    other users were refused too (34 of 76 answered). One user's requests past its share are refused before they
    take a place."""
    await services.append([usage(i, "acme") for i in range(20)])
    flooder = await Refusals().connect(guarded_nats, "billing", "billing-secret")
    other = await Refusals().connect(guarded_nats, "acme-bi", "acme-secret")
    busy: list[bytes] = []

    async def heard(msg) -> None:
        busy.append(msg.headers.get(subjects.SERVICE_ERROR_CODE_HEADER, "") if msg.headers else "")

    inbox = "_INBOX_billing.flood"
    await flooder.subscribe(f"{inbox}.>", cb=heard)
    subject = door_subject("billing", "tenant-spend", None, "replay")
    heavy = msgspec.json.encode(ReplayRequest(max_events=10_000))

    async def flood() -> None:
        for i in range(3000):
            await flooder.publish(subject, heavy, reply=f"{inbox}.{i}")
            if i % 100 == 0:
                await asyncio.sleep(0)

    flooding = asyncio.ensure_future(flood())
    door = Door(other, user="acme-bi", name="acme-spend", tenant="acme", timeout_s=10)
    answered = 0
    try:
        for _ in range(20):
            page = msgspec.json.decode(await door.ask("replay", msgspec.json.encode(ReplayRequest())), type=ReplayPage)
            answered += len(page.positions) == 20
        await flooding
        assert answered == 20, "every request of the other user answered"
        assert await wait_for(lambda: "503" in busy, 10), "the flooder's past its share refused as busy"
    finally:
        flooding.cancel()
        await flooder.close()
        await other.close()
