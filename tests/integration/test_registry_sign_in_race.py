"""The registry's sign-in check while the user changes under it, made deterministic: the check is held inside
argon2's own `verify` (argon2-cffi's PasswordHasher, told to wait; none of our code is replaced) while the change
goes through the real NATS request path, then let go. The registry, its NATS server and a fresh database are the
real ones, run in this process as in test_registry_sign_in_flood."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from argon2 import PasswordHasher

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry import handlers
from tests.conftest import create_database, wait_for
from tests.integration.test_registry_sign_in_flood import command, registry

PASSWORD = "correct-horse-9"


class HeldVerify(PasswordHasher):
    """argon2's hasher, whose `verify` starts only when the test lets it (`go`)."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.go = threading.Event(), threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.started.set()
        self.go.wait(10)
        return super().verify(hash, password)


@pytest.fixture(scope="module")
async def running(own_nats: str, urls) -> AsyncIterator[tuple[handlers.Deps, object, str]]:
    database_url = await create_database(urls.database_url, f"t_{uuid.uuid4().hex[:12]}")
    async with registry(own_nats, database_url, urls.redis_url) as deps:
        nc = await natsio.connect(own_nats, "registry-race-tests", 10)
        tenant = f"t-{uuid.uuid4().hex[:6]}"
        await command(nc, m.CreateTenant(tenant_id=tenant), timeout_s=30)
        try:
            yield deps, nc, tenant
        finally:
            await nc.close()


async def checked_while(deps: handlers.Deps, nc, username: str, *changes: m.Command) -> m.CommandReply | str:
    """A sign-in check of `username` with PASSWORD, with `changes` recorded after it read the user and before its
    hash is compared: its reply, or its error code."""
    held = HeldVerify()
    kept, deps.passwords.hasher = deps.passwords.hasher, held
    try:
        asking = asyncio.create_task(command(nc, m.VerifyCredentials(username=username, password=PASSWORD), 15))
        await wait_for(held.started.is_set, timeout_s=10, what="the check to have read the user and begun")
        for change in changes:
            await command(nc, change, timeout_s=15)
        held.go.set()
        try:
            return await asking
        except ServiceError as exc:
            return exc.body.code
    finally:
        held.go.set()
        deps.passwords.hasher = kept


async def new_user(nc, tenant: str) -> tuple[str, str]:
    username = f"u{uuid.uuid4().hex[:8]}"
    reply = await command(nc, m.CreateUser(username=username, password=PASSWORD, tenant_id=tenant), timeout_s=15)
    return username, str(reply.recorded[0].event_id)


async def test_a_password_changed_during_the_check_refuses_the_old_one(running) -> None:
    """The check compared the password with the hash it read before the change: it matched, and the gateway
    signed tokens after the change that stood for 7 days. The registry reads the user again after the check."""
    deps, nc, tenant = running
    username, created = await new_user(nc, tenant)
    changed = m.UpdateUser(username=username, password="a brand new passphrase")
    assert await checked_while(deps, nc, username, changed) == "INVALID_CREDENTIALS"
    reply = await command(nc, m.VerifyCredentials(username=username, password="a brand new passphrase"), 15)
    assert reply.user_version not in (None, created), "the new password signs in, at the new version"


async def test_a_user_removed_and_made_again_during_the_check_is_not_signed_in_as_the_old_one(running) -> None:
    deps, nc, tenant = running
    username, created = await new_user(nc, tenant)
    again = m.CreateUser(username=username, password=PASSWORD, tenant_id=tenant)
    assert await checked_while(deps, nc, username, m.RemoveUser(username=username), again) == "INVALID_CREDENTIALS"
    reply = await command(nc, m.VerifyCredentials(username=username, password=PASSWORD), 15)
    assert reply.user_version not in (None, created), "the user made again is new credentials"


async def test_a_role_changed_during_the_check_answers_the_user_as_it_is_now_with_its_version(running) -> None:
    """The same password still signs in, as the role it has now and with the version of that record: tokens signed
    for the role it had would be refused at once."""
    deps, nc, tenant = running
    username, created = await new_user(nc, tenant)
    plain = await command(nc, m.VerifyCredentials(username=username, password=PASSWORD), 15)
    assert plain.user is not None and (plain.user.role, plain.user_version) == ("member", created)
    reply = await checked_while(deps, nc, username, m.UpdateUser(username=username, role="admin"))
    assert isinstance(reply, m.CommandReply) and reply.user is not None and reply.user.role == "admin"
    shown = msgspec.json.decode(await natsio.request(nc, subjects.REGISTRY_QUERY,
                                                     encode(m.RegistryQuery("users", id=username)), 5))
    assert reply.user_version == shown["version"] != created, "the version of the record it was answered from"
