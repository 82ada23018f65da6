"""Registry's NATS entry points: commands and queries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchyard_gateway.catalog import document
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_command, decoder, encode
from switchyard_gateway.contracts.messages import CommandReply, RegistryQuery
from switchyard_gateway.kit.service import Runtime, serve_subscriptions
from switchyard_gateway.services.registry import views
from switchyard_gateway.services.registry.settings import Settings
from switchyard_gateway.services.registry.store import RegistryStore

_query = decoder(RegistryQuery)


@dataclass(frozen=True)
class Deps:
    """What the registry's handlers use, built once by `start`."""

    log: Any
    store: RegistryStore


async def on_command(deps: Deps, data: bytes) -> bytes:
    """Apply one admin command; the reply carries its events and, for a new key, the key once."""
    command = decode_command(data)
    events, key, key_id = await deps.store.execute(command)
    deps.log.info("registry.command", command=type(command).__name__, events=len(events))
    return encode(CommandReply(events=events, key=key, key_id=key_id))


async def on_query(deps: Deps, data: bytes) -> bytes:
    """Read registry state."""
    store = deps.store
    return encode(views.answer(store.catalog, _query.decode(data), store.position, store.changed_at))


ADMIN_TENANT = "admin"


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
    if settings.admin_key:
        for command in admin_commands(settings.admin_key):
            await store.execute(command)
    if settings.registry_document:
        await apply_document(runtime, store, Path(settings.registry_document))
    deps = Deps(log=runtime.log, store=store)
    await serve_subscriptions(runtime, SUBSCRIPTIONS, deps)
    return deps


async def apply_document(runtime: Runtime[Settings], store: RegistryStore, path: Path) -> None:
    """Apply the registry document `SWITCHYARD_REGISTRY_DOCUMENT` names; a document with problems stops us."""
    doc, problems = document.checked(path)
    if doc is None:
        for problem in problems:
            runtime.log.error("registry.document_problem", path=str(path), at=problem.path, problem=problem.message)
        raise SystemExit(f"{path}: {len(problems)} problem(s) in the registry document")
    events, _, _ = await store.execute(m.ImportConfig(config=doc))
    runtime.log.info("registry.document_applied", path=str(path), changes=len(events))
