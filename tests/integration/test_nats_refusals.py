"""NATS refusing a client that runs, told at once: a subscriber whose credentials change while it follows the log
(nats-server's users reloaded) ends with NotAuthorized rather than reconnecting for ever, while a server restarted
with the same users is reconnected to and followed on at once; a request NATS refuses the user is NotPermitted
within a moment, not at its timeout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nats
import pytest
import structlog
import structlog.testing

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.metering import ReplayRequest
from switchyard_gateway.events import tail
from switchyard_gateway.kit import natsio, service
from switchyard_gateway.kit.nats_auth import SubscriberUser, server_config, with_user
from switchyard_gateway.kit.natsio import NotAuthorized, NotPermitted
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import create_database, wait_for
from tests.integration.logharness import Metering, usage
from tests.integration.test_nats_permissions import guarded_stack

SERVICES_PASSWORD = "services-secret-password"
BILLING = SubscriberUser("billing", "billing-secret", "tenant-spend")
USERS = [BILLING]


class GuardedNats:
    """A NATS server of the module's own with users, its configuration changed and reloaded as an operator would."""

    def __init__(self, stack: EmbeddedStack, config: Path) -> None:
        self.stack, self.config = stack, config

    @property
    def url(self) -> str:
        return self.stack.urls.nats_url

    def _reloads(self) -> int:
        return self.stack.log_path("nats").read_text().count("Reloaded server configuration")

    async def reload(self, users: list[SubscriberUser]) -> None:
        """Write these users and have nats-server read them again (SIGHUP), as `nats-server --signal reload` does."""
        before = self._reloads()
        self.config.write_text(server_config(SERVICES_PASSWORD, users))
        pid = json.loads((self.stack.data_dir / "stack.json").read_text())["pids"]["nats"]
        os.kill(pid, signal.SIGHUP)
        await wait_for(lambda: self._reloads() > before, 10, what="nats-server to reload its users")

    async def restart(self, services_password: str = SERVICES_PASSWORD) -> None:
        """Stop nats-server and start it again, with the services' password given, its subscribers as they were."""
        await asyncio.to_thread(self.stack.stop_component, "nats")
        self.config.write_text(server_config(services_password, USERS))
        await asyncio.to_thread(self.stack.start_component, "nats")


@pytest.fixture(scope="module")
def guarded(urls, stack_root: Path) -> Iterator[GuardedNats]:
    with guarded_stack(urls, stack_root, "nats-refusals", SERVICES_PASSWORD, USERS) as (running, config):
        yield GuardedNats(running, config)


@pytest.fixture
async def services(guarded: GuardedNats, pool, database_url: str):
    nc = await natsio.connect(with_user(guarded.url, "switchyard", SERVICES_PASSWORD), "metering", 10)
    harness = Metering(nc, pool, database_url)
    await harness.start()
    yield harness
    await harness.stop()
    await nc.close()
    await guarded.reload(USERS)                     # as the module began, whatever the test changed


class Applied:
    """What a subscriber applied, position by position."""

    def __init__(self) -> None:
        self.positions: list[int] = []

    async def __call__(self, _conn, batch) -> None:
        self.positions.extend(position for position, _ in batch)


async def subscriber(urls, guarded: GuardedNats, apply=None, **options) -> Subscriber:
    return Subscriber(options.pop("name", BILLING.name), apply or Applied(),
                      nats_url=with_user(guarded.url, BILLING.user, BILLING.password),
                      database_url=await create_database(urls.database_url, f"r_{uuid.uuid4().hex[:10]}"), **options)


@pytest.mark.parametrize("users", [
    pytest.param([SubscriberUser("billing", "a-new-billing-secret", "tenant-spend")], id="password-changed"),
    pytest.param([], id="user-removed"),
])
async def test_a_subscriber_whose_credentials_are_refused_while_it_runs_ends_not_authorized(
        guarded: GuardedNats, services: Metering, urls, users: list[SubscriberUser]) -> None:
    """The server dropped the client when its users were reloaded, and it never came back (nats-py closed it, or
    tried again for ever, each time refused): `run()` went on waiting for metering. Now every server refusing the
    credentials on reconnecting closes the client, and `run()` ends saying so, naming the user, never the
    password."""
    head = await services.append([usage(i, "acme") for i in range(5)])
    follower = await subscriber(urls, guarded)
    running = asyncio.ensure_future(follower.run())
    try:
        await asyncio.wait_for(follower.live.wait(), 20)
        assert await follower.position.reach(head, 20)
        await guarded.reload(users)
        await wait_for(running.done, 10, what="the subscriber to end")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    with pytest.raises(NotAuthorized) as ended:
        running.result()
    said = str(ended.value)
    assert "refused the credentials of the user billing" in said and "Authorization Violation" in said, said
    assert BILLING.password not in said and follower.nc.is_closed


async def test_a_subscriber_follows_on_at_once_across_a_restart_with_the_same_credentials(
        guarded: GuardedNats, services: Metering, urls) -> None:
    """A disconnection that is no refusal (the server restarted, its users unchanged) is reconnected from, and the
    live tail, whose consumer went with the server, is taken up again at once from the subscriber's position: it
    waited for two missed heartbeats (10 to 20 s at the default 5 s). Every event applied once, none missed; so too
    for a subscriber given a client of nats-py's own (`nc`), not one natsio made."""
    assert tail.HEARTBEAT_S >= 5
    first = await services.append([usage(i, "acme") for i in range(5)])
    own = await nats.connect(with_user(guarded.url, BILLING.user, BILLING.password), inbox_prefix=BILLING.inbox,
                             reconnect_time_wait=0.5, max_reconnect_attempts=-1)
    followers = [await subscriber(urls, guarded, Applied()), await subscriber(urls, guarded, Applied(), nc=own,
                                                                               user=BILLING.user)]
    running = [asyncio.ensure_future(follower.run()) for follower in followers]
    try:
        for follower in followers:
            await asyncio.wait_for(follower.live.wait(), 20)
            assert await follower.position.reach(first, 20)
        switches = [follower.switches for follower in followers]
        await guarded.restart()
        head = await services.append([usage(i, "beta") for i in range(5, 10)])
        for follower, switched in zip(followers, switches):
            assert await follower.position.reach(head, 5), "followed on within 5 s of the restart"
            await wait_for(lambda: follower.live.is_set() and follower.switches > switched, 5,
                           what="the subscriber to follow live again")
        last = await services.append([usage(i, "gamma") for i in range(10, 13)])
        for follower in followers:
            assert await follower.position.reach(last, 5), "and live after it"
        assert not any(task.done() for task in running)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await own.close()
    for follower in followers:
        assert follower.apply.positions == list(range(1, last + 1))


async def test_a_service_whose_credentials_are_refused_while_it_runs_exits_saying_so(
        guarded: GuardedNats, monkeypatch) -> None:
    """A service whose user every server refuses on reconnecting (NATS restarted with the services' password
    changed) tried again for ever, half alive; it ends itself now, as when the server closes its connection, and
    its supervisor's restart fails to start, saying why."""
    signalled: list[int] = []

    class Os:
        """The service's `os`, save that the signal it sends itself is kept (the stack's own signals still go)."""

        def __getattr__(self, name: str):
            return getattr(os, name)

        def kill(self, _pid: int, sig: int) -> None:
            signalled.append(sig)

    monkeypatch.setattr(service, "os", Os())
    monkeypatch.setattr(service.logs, "configure", lambda *a, **k: structlog.get_logger())
    settings = service.ServiceSettings(nats_url=with_user(guarded.url, "switchyard", SERVICES_PASSWORD),
                                       connect_timeout_s=5)
    runtime = await service.open_runtime("refused-runtime", settings, database=False)
    try:
        with structlog.testing.capture_logs() as logs:
            await guarded.restart(services_password="a-new-services-password")
            await wait_for(lambda: signalled, 10, what="the service to end itself")
        assert signalled == [signal.SIGTERM] and runtime.nc.is_closed
        [closed] = [line for line in logs if line["event"] == "nats.closed_for_good"]
        assert "refused the credentials of the user switchyard" in closed["error"]
        assert SERVICES_PASSWORD not in closed["error"]
        with pytest.raises(NotAuthorized):
            await service.open_runtime("refused-runtime", settings, database=False)
    finally:
        await guarded.reload(USERS)
        await service.close_runtime(runtime)


async def test_a_request_nats_refuses_the_user_is_not_permitted_at_once_naming_the_subject(
        guarded: GuardedNats, services: Metering) -> None:
    """NATS reports a permissions violation to the client's error callback alone, and the request it refused waited
    out its timeout (then taken for a service that is down, or for NotPermitted seconds late). It fails as soon as
    NATS says so now: a subject the user may not publish on, or an inbox it may not read its answers from."""
    billing = with_user(guarded.url, BILLING.user, BILLING.password)
    own_inbox = await natsio.connect(billing, "refusals", 10, inbox_prefix=BILLING.inbox)
    foreign_inbox = await natsio.connect(billing, "refusals", 10)          # `_INBOX.`: not the user's to read
    try:
        for nc, subject, says in (
                (own_inbox, subjects.METERING_REPLAY, f"publish on {subjects.METERING_REPLAY}"),
                (own_inbox, "Metering.Elsewhere.X", "publish on Metering.Elsewhere.X"),
                (foreign_inbox, subjects.subscriber_subject("billing", "tenant-spend", None, "replay"),
                 "subscribe to its inbox _INBOX.>")):
            for _ in range(2):                                  # and again: refused again, as quickly
                started = time.monotonic()
                with pytest.raises(NotPermitted) as refused:
                    await natsio.request(nc, subject, msgspec.json.encode(ReplayRequest()), 10)
                assert time.monotonic() - started < 2, subject
                assert refused.value.status == 403 and says in refused.value.body.message
        # allowed, it is answered as ever
        page = await natsio.request(own_inbox, subjects.subscriber_subject("billing", "tenant-spend", None, "replay"),
                                    msgspec.json.encode(ReplayRequest()), 10)
        assert b"positions" in page
    finally:
        await own_inbox.close()
        await foreign_inbox.close()


@pytest.mark.parametrize(("options", "says"), [
    ({"name": "not-its-name"}, "ask through the door metering.subscriber.v1.billing.not-its-name._all.replay"),
    ({"inbox_prefix": "_INBOX_acme-bi"}, "subscribe to its inbox _INBOX_acme-bi.>"),
])
async def test_a_subscriber_nats_refuses_ends_well_within_its_request_timeout(
        guarded: GuardedNats, services: Metering, urls, options: dict, says: str) -> None:
    """A door or an inbox its user is not given: `run()` ended with NotPermitted only once a request had waited out
    `request_timeout_s` (30 s by default)."""
    follower = await subscriber(urls, guarded, request_timeout_s=10, **options)
    started = time.monotonic()
    with pytest.raises(NotPermitted) as ended:
        await asyncio.wait_for(follower.run(), 10)
    assert time.monotonic() - started < 5
    assert says in ended.value.body.message, ended.value.body.message
