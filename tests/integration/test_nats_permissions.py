"""NATS decides who may replay the log: a NATS server started with the users `libs/kit/nats_auth.py` writes (the
configuration `switchyard up --nats-users` gives it). A subscriber's user can catch up and follow with nothing but
its allow lists; a tenant's user gets that tenant's events only; NATS refuses everything else they try."""

from __future__ import annotations

import asyncio
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
from switchyard_gateway.contracts.metering import ReplayPage, ReplayRequest
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.nats_auth import SubscriberUser, UsersError, inbox_prefix, load, server_config, with_user
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import create_database
from tests.integration.logharness import Metering, usage

SERVICES_PASSWORD = "services-secret"
USERS = [SubscriberUser("billing", "billing-secret", "tenant-spend"),
         SubscriberUser("acme-bi", "acme-secret", "acme-spend", tenant="acme")]


@pytest.fixture(scope="module")
def guarded_nats(urls, stack_root: Path) -> Iterator[str]:
    root = stack_root / f"nats-auth-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    config = root / "auth.conf"
    config.write_text(server_config(SERVICES_PASSWORD, USERS))
    with EmbeddedStack(root / "stack", database_url=urls.database_url, redis_url=urls.redis_url, durable=False,
                       nats_config=config) as running:
        yield running.urls.nats_url


@pytest.fixture
async def services(guarded_nats: str, pool, database_url: str):
    nc = await natsio.connect(with_user(guarded_nats, "switchyard", SERVICES_PASSWORD), "metering", 10)
    harness = Metering(nc, pool, database_url)
    await harness.start()
    yield harness
    await harness.stop()
    await nc.close()


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
    everyone = Subscriber("tenant-spend", _nothing, nats_url=with_user(guarded_nats, "billing", "billing-secret"),
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


async def test_nats_refuses_a_user_what_it_is_not_allowed(guarded_nats: str, services: Metering) -> None:
    await services.append([usage(1, "acme"), usage(2, "beta")])
    client = Refusals()
    nc = await client.connect(guarded_nats, "acme-bi", "acme-secret")
    try:
        own = await nc.request(f"{subjects.METERING_REPLAY}.acme", msgspec.json.encode(ReplayRequest()), timeout=10)
        assert msgspec.json.decode(own.data, type=ReplayPage).positions == [1]
        for subject in (subjects.METERING_REPLAY, f"{subjects.METERING_REPLAY}.beta"):      # everyone's, another's
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(subject, msgspec.json.encode(ReplayRequest()), timeout=1)
            assert await client.refused(f'permissions violation for publish to "{subject}"'), client.errors
        with pytest.raises(nats.errors.TimeoutError):          # a consumer of another tenant's events on LOG
            await nc.jetstream(timeout=1).add_consumer(subjects.STREAM_LOG, ConsumerConfig(
                name=f"x-{uuid.uuid4().hex[:6]}", filter_subject="log.*.*.*.beta", ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL, deliver_subject=nc.new_inbox()))
        assert await client.refused("permissions violation for publish to \"$JS.API.CONSUMER.CREATE.LOG")
        await nc.subscribe("_INBOX_billing.>")                  # another user's replies
        assert await client.refused('permissions violation for subscription to "_INBOX_billing.>"')
        await nc.publish("usage.recorded.v2.acme", b"{}")       # made-up usage
        assert await client.refused('permissions violation for publish to "usage.recorded.v2.acme"')
    finally:
        await nc.close()
    with pytest.raises(nats.errors.Error):
        await Refusals().connect(guarded_nats, "acme-bi", "not-the-password")


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
    for name in ("metering", "quota", "spend.outbox", "gateway:REGISTRY", "has space"):
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
