"""A row of the log this build cannot decode does not stop an outbox (on a NATS server of this module's own): the
registry publishes it as stored, once, in its place between the events around it, moves its checkpoint past it,
and a gateway that cannot read it sets it aside and goes on."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
import structlog

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.contracts.quota import LimitsUpdate, SetLimits
from switchyard_gateway.events.outbox import UNDECODABLE as UNDECODABLE_ROWS
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.quota.store import OUTBOX as QUOTA_OUTBOX
from switchyard_gateway.services.quota.store import LimitsStore
from switchyard_gateway.services.registry.store import OUTBOX, RegistryStore
from tests.conftest import wait_for
from tests.integration.test_dead_letters import listed

# a type a newer registry records (under REGISTRY's `provider.>`), and a known type whose payload does not decode
UNDECODABLE = {
    "unknown type": ("provider.renamed.v1", {"provider_id": "p1", "display_name": "Renamed"}, "provider.renamed.v1._"),
    "corrupt payload": (subjects.TENANT_CREATED, {"tenant_id": 7, "display_name": "seven"}, "tenant.created.v1._"),
}


async def store_raw(pool, kind: str, fields: dict) -> tuple[int, str, str]:
    """A row as another build (or a damaged disk) left it: its position, event id and payload as stored."""
    event_id = str(uuid.uuid4())
    payload = json.dumps({"type": kind, "event_id": event_id, "occurred_at": datetime.now(UTC).isoformat(), **fields})
    async with pool.acquire() as conn:
        position = await conn.fetchval(
            "INSERT INTO events (event_id, type, tenant, occurred_at, payload) VALUES ($1, $2, NULL, now(), $3)"
            " RETURNING position", uuid.UUID(event_id), kind, payload)
    return position, event_id, payload


async def append(pool, *events) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, list(events))


async def messages(js, stream: str) -> list[tuple[str, bytes, str]]:
    """(subject, body, message id) of every message the stream holds, in order."""
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    held = [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    return [(m.subject, m.data, (m.headers or {}).get(subjects.MSG_ID_HEADER, "")) for m in held]


async def checkpoint(pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT position FROM projection_checkpoints WHERE projection = $1", OUTBOX)


@pytest.mark.parametrize("case", list(UNDECODABLE))
async def test_the_registry_outbox_publishes_a_row_it_cannot_decode_as_stored_once_and_goes_on(
        case: str, nats_client, pool) -> None:
    kind, fields, subject = UNDECODABLE[case]
    await natsio.ensure_streams(nats_client)
    js = nats_client.jetstream()
    await js.purge_stream(subjects.STREAM_REGISTRY)
    before, after = TenantCreated(tenant_id="before"), TenantCreated(tenant_id="after")
    await append(pool, before)
    bad, bad_id, stored = await store_raw(pool, kind, fields)
    await append(pool, after)

    store = RegistryStore(pool, nats_client)
    counted = UNDECODABLE_ROWS.labels(OUTBOX)._value.get()
    with structlog.testing.capture_logs() as logs:
        await store.load()                          # fold, repair, publish: it used to raise here, every time
    assert UNDECODABLE_ROWS.labels(OUTBOX)._value.get() == counted + 1
    assert await checkpoint(pool) == bad + 1
    assert await messages(js, subjects.STREAM_REGISTRY) == [
        ("tenant.created.v1.before", await _body(pool, bad - 1), str(before.event_id)),
        (subject, stored.encode(), bad_id),
        ("tenant.created.v1.after", await _body(pool, bad + 1), str(after.event_id)),
    ]
    [warned] = [x for x in logs if x["event"] == "outbox.published_undecodable"]
    assert (warned["outbox"], warned["position"], warned["type"], warned["log_level"]) == (OUTBOX, bad, kind, "warning")
    assert stored not in json.dumps(warned, default=str) and "seven" not in json.dumps(warned, default=str)
    assert set(store.catalog.tenants) == {"before", "after"}

    # the fold sets aside, on DEADLETTER, what it reads and cannot decode; a type it does not know is not its own
    if kind == subjects.TENANT_CREATED:
        assert store.outbox.fold.aside == {bad}
        await wait_for(lambda: _set_aside(nats_client, OUTBOX, bad_id), 10, what="the fold's dead letter")
    else:
        assert store.outbox.fold.aside == set()

    # published once: again, after a restart, and after repair looked, nothing more
    assert await store.outbox.publish() == 0
    assert await store.outbox.repair() is False
    again = RegistryStore(pool, nats_client)
    await again.load()
    assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.messages == 3
    assert await checkpoint(pool) == bad + 1

    # a stream that lost everything gets every row again, the undecodable one included, and then repair rests
    await js.delete_stream(subjects.STREAM_REGISTRY)          # its duplicate window goes with it, as with lost data
    await natsio.ensure_streams(nats_client)
    assert await store.outbox.repair() is True
    assert await store.outbox.publish() == 3
    assert [m[2] for m in await messages(js, subjects.STREAM_REGISTRY)] == [
        str(before.event_id), bad_id, str(after.event_id)]
    assert await store.outbox.repair() is False
    assert await store.outbox.publish() == 0

    # a gateway that cannot read it sets it aside under its own name and folds what follows
    gateway = await natsio.connect(nats_client.connected_url.geturl(), f"gw{uuid.uuid4().hex[:6]}", 10)
    state = LocalState()
    try:
        await state.start(gateway)
        assert set(state.catalog.tenants) == {"before", "after"}
        assert len(state.feed.aside) == 1
        await wait_for(lambda: _set_aside(nats_client, state.feed.name, bad_id), 10, what="the gateway's dead letter")
    finally:
        await state.feed.stop()
        await gateway.close()


async def test_the_outbox_passes_on_a_field_this_build_does_not_read(nats_client, pool) -> None:
    """A newer build's event of a known type with a field added: this build decodes it, and publishes it as stored."""
    await natsio.ensure_streams(nats_client)
    js = nats_client.jetstream()
    await js.purge_stream(subjects.STREAM_REGISTRY)
    _, event_id, stored = await store_raw(pool, subjects.TENANT_CREATED, {"tenant_id": "acme", "region": "eu-2"})
    store = RegistryStore(pool, nats_client)
    await store.load()
    assert "acme" in store.catalog.tenants and store.outbox.fold.aside == set()
    assert await messages(js, subjects.STREAM_REGISTRY) == [("tenant.created.v1.acme", stored.encode(), event_id)]


async def test_the_quota_outbox_publishes_past_a_newer_builds_limits_when_it_records(nats_client, pool) -> None:
    """Limits with a budget period this build does not read, recorded between two of its own: its next command
    publishes all three in log order, and the newer one goes out as stored."""
    await natsio.ensure_streams(nats_client)
    js = nats_client.jetstream()
    await js.purge_stream(subjects.STREAM_LIMITS)
    store = LimitsStore(pool, nats_client)
    await store.load()
    await store.set_limits(SetLimits(tenant_id="t", update=LimitsUpdate(daily_tokens=100)))
    newer, newer_id, stored = await store_raw(pool, subjects.LIMITS_SET, {
        "tenant_id": "u", "model_id": "", "limits": {"daily_tokens": 50, "budget_period": "quarter"}})
    await store.set_limits(SetLimits(tenant_id="t", update=LimitsUpdate(daily_tokens=300)))
    held = await messages(js, subjects.STREAM_LIMITS)
    assert [subject for subject, _, _ in held] == ["limits.set.v1.t", "limits.set.v1._", "limits.set.v1.t"]
    assert [json.loads(body)["limits"]["daily_tokens"] for _, body, _ in held] == [100, 50, 300]
    assert held[1][1:] == (stored.encode(), newer_id)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT position FROM projection_checkpoints WHERE projection = $1",
                                   QUOTA_OUTBOX) == newer + 1
    assert store.limits.aside == {newer} and store.book.tenant("t").daily_tokens == 300


async def _body(pool, position: int) -> bytes:
    async with pool.acquire() as conn:
        return (await conn.fetchval("SELECT payload::text FROM events WHERE position = $1", position)).encode()


async def _set_aside(nc, consumer: str, event_id: str) -> bool:
    """Whether `consumer` set the event aside (stage decode) exactly once."""
    letters = [x for x in await listed(nc, consumer) if event_id.encode() in x.letter.data]
    return [x.letter.stage for x in letters] == ["decode"]
