"""Registry's NATS entry points: commands (sign-in checks among them) and queries."""

from __future__ import annotations

import asyncio
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchyard_gateway.catalog import document
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_command, decoder, encode
from switchyard_gateway.contracts.messages import CommandReply, ErrorBody, RegistryQuery
from switchyard_gateway.contracts.users import UserView
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.service import Runtime, serve_subscriptions
from switchyard_gateway.services.registry import views
from switchyard_gateway.services.registry.checks import OPERATORS
from switchyard_gateway.services.registry.decide_users import check_password
from switchyard_gateway.services.registry.passwords import Busy, Passwords
from switchyard_gateway.services.registry.settings import Settings
from switchyard_gateway.services.registry.store import RegistryStore

_query = decoder(RegistryQuery)
LATER_EVENTS = tuple(typing.get_args(m.LaterRegistryEvent))
PAGE_ROOM_BYTES = 64 * 1024     # what a page of a list leaves of one NATS message: its envelope, headers, slack
COMMANDS_AT_ONCE = 256      # requests on registry.command.v1 in hand at once (sign-in checks run side by side)


@dataclass(frozen=True)
class Deps:
    """What the registry's handlers use, built once by `start`."""

    log: Any
    store: RegistryStore
    passwords: Passwords
    page_bytes: int = 1 << 20                   # what a page of a list may take, encoded: one NATS message, less room
    commands: asyncio.Lock = field(default_factory=asyncio.Lock)     # one command at a time, in arrival order


async def on_command(deps: Deps, data: bytes) -> bytes:
    """Apply one admin command; the reply carries its events and, for a new key, the key once.

    Requests are handled side by side (`COMMANDS_AT_ONCE`): a sign-in check records nothing, takes no lock and
    runs beside the others (a burst of them held every command back: revoking a key answered 503 for as long as
    it lasted); every other command waits for the one before it, as one subscription's requests did. A password
    a command carries is checked against the policy and hashed first, off the event loop."""
    command = decode_command(data)
    if isinstance(command, m.VerifyCredentials):
        return await verify_credentials(deps, command)
    async with deps.commands:
        return await _execute(deps, command)


async def _execute(deps: Deps, command: Any) -> bytes:
    password_hash = None
    if isinstance(command, m.CreateUser | m.UpdateUser) and command.password is not None:
        check_password(command.password)
        password_hash = await deps.passwords.hash(command.password)
    if isinstance(command, m.ImportConfig):         # a summary when asked for one (an earlier gateway asks for events)
        summary, recorded = await deps.store.import_document(command)
        deps.log.info("registry.command", command="ImportConfig", events=summary.events)
        return encode(CommandReply(summary=summary) if command.summary else CommandReply(events=recorded))
    events, key, key_id = await deps.store.execute(command, password_hash)
    deps.log.info("registry.command", command=type(command).__name__, events=len(events))
    later = [e for e in events if isinstance(e, LATER_EVENTS)]
    earlier = [e for e in events if not isinstance(e, LATER_EVENTS)]
    return encode(CommandReply(events=earlier, key=key, key_id=key_id, later_events=later))


async def verify_credentials(deps: Deps, command: m.VerifyCredentials) -> bytes:
    """The user and the version of its credentials, if the password matches the hash of that very version; one 401
    for a wrong password and an unknown user alike.

    The check is slow (a hashing slot, up to `Passwords.wait_s`, then Argon2id), and the user may change meanwhile:
    it is read again after the check, and a password changed (or the user removed, or made again) since it was
    first read refuses the sign-in, as the old password it matched no longer signs anyone in; a change of role or
    tenant alone (the same hash) answers the user as it is now. The answer's `user_version` is the version of the
    record the password was checked against; the gateway signs it into the tokens, which stand while it is the
    user's (`Catalog.user_session`), so no change that lands after this answer can be outrun either."""
    store = deps.store
    await store.refresh()
    user = store.catalog.users.get(command.username)
    try:
        matched = await deps.passwords.check(user.password_hash if user is not None else None, command.password)
    except Busy as exc:
        deps.log.warning("registry.sign_in_busy", reason=str(exc))
        raise ServiceError(503, ErrorBody("SIGN_IN_BUSY", "Too many sign-in attempts are being checked; retry "
                                                          "shortly")) from None
    if matched and user is not None:
        await store.refresh()
        now = store.catalog.users.get(command.username)
        if now is None or now.password_hash != user.password_hash:
            deps.log.info("registry.sign_in_outdated", removed=now is None)
            matched = False
        user = now
    if not matched or user is None or user.tenant_id not in store.catalog.tenants:
        deps.log.info("registry.sign_in_refused", known_user=user is not None)
        raise ServiceError(401, ErrorBody("INVALID_CREDENTIALS", "Invalid username or password"))
    view = UserView(username=user.username, tenant_id=user.tenant_id, role=user.role, display_name=user.display_name)
    return encode(CommandReply(user=view, user_version=str(user.event_id)))


async def on_query(deps: Deps, data: bytes) -> bytes:
    """Read registry state; `status` also says whether the log's database answers."""
    store = deps.store
    query = _query.decode(data)
    answer = views.answer(store.catalog, query, store.position, store.changed_at, deps.page_bytes)
    if query.resource == "status":
        answer["database"] = await store.ping()
    return encode(answer)


ADMIN_TENANT = OPERATORS


def admin_commands(admin_key: str) -> list[m.Command]:
    """The operators' tenant and its admin key (`SWITCHYARD_ADMIN_KEY`), issued idempotently at start."""
    return [
        m.CreateTenant(tenant_id=ADMIN_TENANT, display_name="Operators", all_models=True),
        m.IssueKey(tenant_id=ADMIN_TENANT, role="admin", name="bootstrap admin key", secret=admin_key),
    ]


SUBSCRIPTIONS = {subjects.REGISTRY_COMMAND: on_command, subjects.REGISTRY_QUERY: on_query}


async def start(runtime: Runtime[Settings]) -> Deps:
    """Load the catalog from the log, issue the bootstrap admin key, answer commands and queries."""
    assert runtime.pool is not None
    settings = runtime.settings
    store = RegistryStore(runtime.pool, runtime.nc)
    await store.load()
    passwords = Passwords(settings.password_hash_concurrency)
    if settings.admin_key:
        for command in admin_commands(settings.admin_key):
            try:
                await store.execute(command)
            except ServiceError as exc:
                if exc.body.code != "KEY_REVOKED":
                    raise
                # an operator revoked it through the API: a restart must not bring it back
                runtime.log.error("registry.admin_key_revoked", detail="SWITCHYARD_ADMIN_KEY names a key that was "
                                  "revoked; it stays revoked: set a new one to sign in with it")
    if settings.registry_document:
        await apply_document(runtime, store, Path(settings.registry_document))
    deps = Deps(log=runtime.log, store=store, passwords=passwords,
                page_bytes=runtime.nc.max_payload - PAGE_ROOM_BYTES)
    runtime.spawn(store.outbox.follow_retries(), "registry-retries")
    await serve_subscriptions(runtime, SUBSCRIPTIONS, deps, at_once={subjects.REGISTRY_COMMAND: COMMANDS_AT_ONCE})
    return deps


async def apply_document(runtime: Runtime[Settings], store: RegistryStore, path: Path) -> None:
    """Apply the registry document `SWITCHYARD_REGISTRY_DOCUMENT` names; a document with problems stops us."""
    doc, problems = document.checked(path)
    if doc is None:
        for problem in problems:
            runtime.log.error("registry.document_problem", path=str(path), at=problem.path, problem=problem.message)
        raise SystemExit(f"{path}: {len(problems)} problem(s) in the registry document")
    try:
        events, _, _ = await store.execute(m.ImportConfig(config=doc))
    except ServiceError as exc:         # refused as a whole: an event too large for one NATS message, say
        runtime.log.error("registry.document_refused", path=str(path), status=exc.status, problem=exc.body.message)
        raise SystemExit(f"{path}: {exc.body.message}") from None
    runtime.log.info("registry.document_applied", path=str(path), changes=len(events))
