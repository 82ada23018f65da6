"""A command an outbox recorded is answered as recorded when JetStream cannot take its events yet (on a NATS server
of this module's own), and its events go out by themselves once it can."""

from __future__ import annotations

import structlog

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.quota import LimitsUpdate, SetLimits
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.services.quota.store import LimitsStore
from tests.conftest import wait_for


async def test_a_recorded_change_is_answered_and_published_once_jetstream_takes_it(nats_client, pool) -> None:
    """With two of three NATS nodes stopped a limits change took 5 s and answered 503 "try again" though it was in
    the log and in force: the client was told it failed, and its event went out only with the next command."""
    await natsio.ensure_streams(nats_client)
    js = nats_client.jetstream()
    store = LimitsStore(pool, nats_client)
    await store.load()
    await js.delete_stream(subjects.STREAM_LIMITS)              # JetStream takes nothing on LIMITS' subjects now
    with structlog.testing.capture_logs() as logs:
        reply = await store.set_limits(SetLimits(tenant_id="later", update=LimitsUpdate(daily_tokens=100)))
    assert reply.limits.daily_tokens == 100
    assert [line["event"] for line in logs if line["event"].startswith("outbox.")] == ["outbox.publish_deferred"]
    async with pool.acquire() as conn:
        assert [e.tenant_id for _, e in await _logged(conn)] == ["later"]

    await natsio.ensure_streams(nats_client)                    # JetStream takes them again
    await wait_for(lambda: _held(js), timeout_s=15, what="the recorded change published by itself")
    stored = await js.get_msg(subjects.STREAM_LIMITS, 1)
    assert stored.subject == f"{subjects.LIMITS_SET}.later"


async def _held(js) -> bool:
    return (await js.stream_info(subjects.STREAM_LIMITS)).state.messages == 1


async def _logged(conn) -> list:
    return [row async for batch in eventlog.read_all(conn, 0, [subjects.LIMITS_SET]) for row in batch]
