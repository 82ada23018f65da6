"""A row of the log too large for one NATS message does not stop an outbox (on a NATS server of this module's own,
its max_payload 16 KiB): the registry publishes a marker in its place and the rows after it; a command whose event
would be too large is refused, and nothing is recorded."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import structlog
import yaml

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventWithheld
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.contracts.quota import LimitsUpdate, SetLimits
from switchyard_gateway.events.outbox import OVERSIZED, EventTooLarge
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.service import Runtime
from switchyard_gateway.kit.stack import EmbeddedStack, StackUrls
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.quota.store import LimitsStore
from switchyard_gateway.services.registry.handlers import apply_document
from switchyard_gateway.services.registry.settings import Settings
from switchyard_gateway.services.registry.store import OUTBOX, RegistryStore
from tests.conftest import wait_for
from tests.integration.test_outbox_undecodable import _set_aside, append, checkpoint, messages

MAX_PAYLOAD = 16 * 1024
SECRET = "hush-"                    # what an oversized row holds: never in a log line


@pytest.fixture(scope="module")
def small_nats(urls: StackUrls, stack_root: Path) -> Iterator[str]:
    """nats-server (JetStream) with `max_payload: 16384`; PostgreSQL and Valkey are the session's."""
    home = stack_root / f"small-nats-{uuid.uuid4().hex[:8]}"
    home.mkdir()
    config = home / "nats.conf"
    config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    with EmbeddedStack(home / "stack", database_url=urls.database_url, redis_url=urls.redis_url, durable=False,
                       nats_config=config) as running:
        yield running.urls.nats_url


@pytest.fixture
async def small(small_nats: str):
    nc = await natsio.connect(small_nats, "oversized-tests", 10)
    await natsio.ensure_streams(nc)
    js = nc.jetstream()
    for stream in (subjects.STREAM_REGISTRY, subjects.STREAM_LIMITS, subjects.STREAM_DEADLETTER):
        await js.purge_stream(stream)
    yield nc
    await nc.close()


def tenant_of_size(tenant_id: str, message_bytes: int) -> TenantCreated:
    """A tenant whose event, with its message id header, makes a NATS message of exactly `message_bytes`."""
    bare = TenantCreated(tenant_id=tenant_id)
    pad = message_bytes - natsio.message_size(encode(bare), {subjects.MSG_ID_HEADER: str(bare.event_id)})
    event = TenantCreated(tenant_id=tenant_id, display_name=(SECRET * pad)[:pad], event_id=bare.event_id,
                          occurred_at=bare.occurred_at)
    assert natsio.message_size(encode(event), {subjects.MSG_ID_HEADER: str(event.event_id)}) == message_bytes
    return event


async def test_a_row_too_large_for_one_message_is_withheld_in_its_place_and_the_rows_after_it_go_out(
        small, pool) -> None:
    assert small.max_payload == MAX_PAYLOAD               # the client reads the limit from the server's INFO
    js = small.jetstream()
    before, after = TenantCreated(tenant_id="before"), TenantCreated(tenant_id="after")
    fits, too_large = tenant_of_size("fits", MAX_PAYLOAD), tenant_of_size("too-large", MAX_PAYLOAD + 1)
    head = await log_head(pool)
    await append(pool, before, fits, too_large, after)       # recorded while the limit was higher

    store = RegistryStore(pool, small)
    counted = OVERSIZED.labels(OUTBOX)._value.get()
    with structlog.testing.capture_logs() as logs:
        await store.load()                  # fold, repair, publish: it used to raise here, every time
    assert OVERSIZED.labels(OUTBOX)._value.get() == counted + 1
    held = await messages(js, subjects.STREAM_REGISTRY)
    assert [(subject, msg_id) for subject, _, msg_id in held] == [
        ("tenant.created.v1.before", str(before.event_id)), ("tenant.created.v1.fits", str(fits.event_id)),
        ("tenant.created.v1._", str(too_large.event_id)), ("tenant.created.v1.after", str(after.event_id))]
    assert [json.loads(body)["tenant_id"] for i, (_, body, _) in enumerate(held) if i != 2] == ["before", "fits", "after"]
    position = head + 3
    assert msgspec.json.decode(held[2][1], type=EventWithheld) == EventWithheld(
        event_id=too_large.event_id, event_type=subjects.TENANT_CREATED, position=position,
        size_bytes=MAX_PAYLOAD + 1, max_payload=MAX_PAYLOAD, withheld_by=OUTBOX)
    assert await checkpoint(pool) == position + 1

    [warned] = [x for x in logs if x["event"] == "outbox.withheld_oversized"]
    assert (warned["position"], warned["event_id"], warned["type"], warned["size_bytes"], warned["log_level"]) == (
        position, str(too_large.event_id), subjects.TENANT_CREATED, MAX_PAYLOAD + 1, "warning")
    assert SECRET not in json.dumps(logs, default=str)
    assert set(store.catalog.tenants) == {"before", "fits", "too-large", "after"}     # the log holds it

    # once: again, after a restart, and after repair looked, nothing more
    assert await store.outbox.publish() == 0
    assert await store.outbox.repair() is False
    await RegistryStore(pool, small).load()
    assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.messages == 4
    assert OVERSIZED.labels(OUTBOX)._value.get() == counted + 1

    # a stream that lost everything gets every row again, the marker in the same place, and repair rests
    await js.delete_stream(subjects.STREAM_REGISTRY)
    await natsio.ensure_streams(small)
    assert await store.outbox.repair() is True
    assert await store.outbox.publish() == 4
    assert [m[0] for m in await messages(js, subjects.STREAM_REGISTRY)] == [
        "tenant.created.v1.before", "tenant.created.v1.fits", "tenant.created.v1._", "tenant.created.v1.after"]
    assert await store.outbox.repair() is False

    # a gateway folds what it can read and sets the marker aside under its own name, once
    gateway = await natsio.connect(small.connected_url.geturl(), f"gw{uuid.uuid4().hex[:6]}", 10)
    state = LocalState()
    try:
        await state.start(gateway)
        assert set(state.catalog.tenants) == {"before", "fits", "after"}
        assert len(state.feed.aside) == 1
        await wait_for(lambda: _set_aside(small, state.feed.name, str(too_large.event_id)), 10,
                       what="the gateway's dead letter")
    finally:
        await state.feed.stop()
        await gateway.close()


async def test_a_command_whose_event_would_not_fit_is_refused_with_413_and_nothing_is_recorded(
        small, pool, tmp_path: Path) -> None:
    js = small.jetstream()
    store = RegistryStore(pool, small)
    await store.load()
    await store.execute(m.RegisterProvider(provider_id="prov", kind="openai-compatible"))
    head = await log_head(pool)
    models = tuple(f"m{i:03d}-{'x' * 100}" for i in range(120))          # about 13 KiB: over 16 KiB less 4 KiB
    with pytest.raises(EventTooLarge) as refused:
        await store.execute(m.RegisterEndpoint(endpoint_id="big", provider_id="prov", base_url="http://h:1",
                                               models=models))
    assert refused.value.status == 413 and refused.value.body.code == "PAYLOAD_TOO_LARGE"
    assert str(MAX_PAYLOAD) in refused.value.body.message and str(MAX_PAYLOAD - natsio.HEADROOM) in \
        refused.value.body.message
    assert "big" not in store.catalog.registered
    assert await log_head(pool) == head
    assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.messages == 1

    # what fits is recorded: the limit is the event's size, not the command's kind
    await store.execute(m.RegisterEndpoint(endpoint_id="small", provider_id="prov", base_url="http://h:1",
                                           models=models[:60]))
    assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.messages == 2

    # a registry document with such an endpoint stops the registry in one line, having recorded nothing
    document = tmp_path / "switchyard.yaml"
    document.write_text(yaml.safe_dump({"providers": [{"id": "prov", "kind": "openai-compatible"}], "endpoints": [
        {"id": "doc", "provider": "prov", "base_url": "http://h:1", "models": list(models)}]}))
    runtime = Runtime(name="registry", settings=Settings(), log=structlog.get_logger(), nc=small, pool=pool)
    with pytest.raises(SystemExit, match=f"switchyard.yaml: .*max_payload of {MAX_PAYLOAD} bytes"):
        await apply_document(runtime, store, document)
    assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.messages == 2

    # the quota service's outbox refuses the same way
    limits = LimitsStore(pool, small)
    await limits.load()
    with pytest.raises(EventTooLarge):
        await limits.set_limits(SetLimits(tenant_id="t", model_id="m" * MAX_PAYLOAD,
                                          update=LimitsUpdate(daily_tokens=1)))
    assert (await js.stream_info(subjects.STREAM_LIMITS)).state.messages == 0
    assert limits.book.models == {}


async def log_head(pool) -> int:
    """The log's last position (a fresh database: 0)."""
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
