"""The registry, run in this process on a NATS server of the module's own and a fresh database, under a flood of
sign-in checks: commands are not held back by them, and checks that could not be answered in time are refused at
once instead of piling up."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError, ServiceUnavailable
from switchyard_gateway.kit.service import close_runtime, open_runtime
from switchyard_gateway.services.registry import handlers
from switchyard_gateway.services.registry.settings import Settings
from tests.conftest import wait_for

_reply = decoder(m.CommandReply)
FLOOD = 150


@pytest.fixture
async def nats_client(own_nats: str):
    nc = await natsio.connect(own_nats, "registry-flood-tests", 10)
    yield nc
    await nc.close()


@contextlib.asynccontextmanager
async def registry(nats_url: str, database_url: str, redis_url: str) -> AsyncIterator[handlers.Deps]:
    """The registry service as its process runs it, stopped at the end as a SIGTERM stops it."""
    settings = Settings(nats_url=nats_url, database_url=database_url, redis_url=redis_url, connect_timeout_s=10,
                        log_json=True)
    runtime = await open_runtime("registry", settings, database=True)
    try:
        deps = await handlers.start(runtime)
        # its endpoints reachable from the test's own connection (a first request a moment early can find none)
        await wait_for(lambda: _answers(nats_url), timeout_s=15, what="the registry answering")
        yield deps
    finally:
        await close_runtime(runtime)


async def _answers(nats_url: str) -> bool:
    nc = await natsio.connect(nats_url, "registry-flood-probe", 10)
    try:
        await natsio.request(nc, subjects.REGISTRY_QUERY, encode(m.RegistryQuery("tenants")), 2)
    except ServiceUnavailable:
        return False
    finally:
        await nc.close()
    return True


async def command(nc, body: object, timeout_s: float = 5.0) -> m.CommandReply:
    return _reply.decode(await natsio.request(nc, subjects.REGISTRY_COMMAND, encode(body), timeout_s))


async def sign_in(nc, username: str, password: str) -> str:
    """How one sign-in check ended: `ok`, or the error code, or `timeout` when no answer came within 10 s."""
    try:
        await command(nc, m.VerifyCredentials(username=username, password=password), timeout_s=10)
    except ServiceUnavailable:
        return "timeout"
    except ServiceError as exc:
        return exc.body.code
    return "ok"


async def test_a_flood_of_sign_ins_holds_no_command_back_and_is_refused_not_queued(
        own_nats, database_url, urls, nats_client) -> None:
    """150 sign-in checks at once (each an Argon2 hash of 64 MiB, two at a time) were handled one after another
    on the command subject, and every command behind them (revoking a key, say) waited: 503 after 5 s for as long
    as the burst lasted, the checks still running long after their askers had gone."""
    async with registry(own_nats, database_url, urls.redis_url):
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        await command(nats_client, m.CreateTenant(tenant_id=tenant), timeout_s=30)
        await command(nats_client, m.CreateUser(username="flooded", password="correct-horse-9", tenant_id=tenant,
                                                role="member"), timeout_s=30)
        flood = [asyncio.create_task(sign_in(nats_client, "flooded", f"guess-{n}")) for n in range(FLOOD)]
        await asyncio.sleep(0.05)                           # the flood is in the registry's hands
        issued = await command(nats_client, m.IssueKey(tenant_id=tenant, role="member"), timeout_s=5)
        assert issued.key, "a command is answered while the sign-in checks run"
        assert not all(task.done() for task in flood), "the flood was still being checked meanwhile"
        ended = await asyncio.gather(*flood)
        assert set(ended) <= {"INVALID_CREDENTIALS", "SIGN_IN_BUSY"}, sorted(set(ended))
        assert "timeout" not in ended                       # each one answered, none left for its asker to give up on
        assert ended.count("SIGN_IN_BUSY") > 0              # more than could be checked in time: refused at once
        assert await sign_in(nats_client, "flooded", "correct-horse-9") == "ok"


async def test_requests_handled_side_by_side_are_bounded_and_one_more_is_refused_busy(nats_client) -> None:
    """An endpoint served `at_once` hands each request to a task of its own, up to its bound; the next is refused
    503 BUSY at once rather than queued without end."""
    release = asyncio.Event()
    started: list[bytes] = []

    async def slow(data: bytes) -> bytes:
        started.append(data)
        await release.wait()
        return data

    subject = f"at-once-test.{uuid.uuid4().hex[:8]}"          # on no stream's subjects
    service = await natsio.serve(nats_client, "at-once-test", {subject: slow}, at_once={subject: 2})
    try:
        first = [asyncio.create_task(natsio.request(nats_client, subject, b"%d" % n, 5)) for n in range(2)]
        await asyncio.wait_for(_until(lambda: len(started) == 2), 5)     # both in hand at once
        with pytest.raises(ServiceError) as refused:
            await natsio.request(nats_client, subject, b"third", 5)
        assert refused.value.status == 503 and refused.value.body.code == "BUSY"
        release.set()
        assert sorted(await asyncio.gather(*first)) == [b"0", b"1"]
    finally:
        await service.stop()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)
