"""Registry's NATS entry points: commands and queries."""

from __future__ import annotations

from libs.contracts import subjects
from libs.kit import bootstrap
from libs.contracts.codec import decode_command, decoder, encode
from libs.contracts.messages import CommandReply, RegistryQuery
from libs.kit.service import Deps, serve_subscriptions
from services.registry import views
from services.registry.store import RegistryStore

_query = decoder(RegistryQuery)


async def on_command(deps: Deps, data: bytes) -> bytes:
    """Apply one admin command; the reply carries its events and, for a new key, the key once."""
    store: RegistryStore = deps.extra["store"]
    command = decode_command(data)
    events, key, key_id = await store.execute(command)
    deps.log.info("registry.command", command=type(command).__name__, events=len(events))
    return encode(CommandReply(events=events, key=key, key_id=key_id))


async def on_query(deps: Deps, data: bytes) -> bytes:
    """Read registry state."""
    store: RegistryStore = deps.extra["store"]
    return encode(views.answer(store.catalog, _query.decode(data), store.position, store.changed_at))


SUBSCRIPTIONS = {subjects.REGISTRY_COMMAND: on_command, subjects.REGISTRY_QUERY: on_query}


async def start(deps: Deps) -> None:
    assert deps.pool is not None and deps.nc is not None
    store = RegistryStore(deps.pool, deps.nc)
    await store.load()
    deps.extra["store"] = store
    if deps.settings.admin_key:
        for command in bootstrap.admin_commands(deps.settings.admin_key):
            await store.execute(command)
    await serve_subscriptions(deps, SUBSCRIPTIONS)
