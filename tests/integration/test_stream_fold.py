"""StreamFold on a real JetStream: caught up at start, read-your-writes by sequence and by event id, and a
consumer that vanishes made anew without missing or repeating an event."""

from __future__ import annotations

import asyncio

from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import Event, TenantCreated
from switchyard_gateway.events import StreamFold
from tests.integration.test_projection_runner import stream  # noqa: F401 — a stream of the test's own


async def publish(nc, stream: str, event: Event, subject: str = "tenant") -> int:
    """Publish one event; its stream sequence."""
    ack = await nc.jetstream().publish(f"{stream.lower()}.{subject}", encode(event))
    return ack.seq


def tenant(i: int) -> TenantCreated:
    return TenantCreated(tenant_id=f"t{i}")


async def test_a_fold_starts_caught_up_and_reads_its_own_writes(nc, stream) -> None:
    for i in range(50):
        await publish(nc, stream, tenant(i))
    folded: list[str] = []
    fold = StreamFold(stream, lambda e: folded.append(e.tenant_id))
    await fold.start(nc, 10)
    try:
        assert folded == [f"t{i}" for i in range(50)] and fold.sequence.value == 50
        event = tenant(50)
        seq = await publish(nc, stream, event)
        assert await fold.sequence.reach(seq, timeout_s=10)
        assert folded[-1] == "t50"
        later = tenant(51)
        await publish(nc, stream, later)
        assert await fold.wait_for([str(later.event_id)], timeout_s=10)
        assert folded[-1] == "t51" and fold.resets == 0
    finally:
        await fold.stop()


async def test_last_per_subject_folds_only_the_newest_of_each_subject(nc, stream) -> None:
    for i in range(6):
        await publish(nc, stream, tenant(i), subject=f"tenant.{i % 2}")
    folded: list[str] = []
    fold = StreamFold(stream, lambda e: folded.append(e.tenant_id), last_per_subject=True)
    await fold.start(nc, 10)
    await fold.stop()
    assert sorted(folded) == ["t4", "t5"]


async def test_a_consumer_that_vanishes_is_made_anew_from_where_the_fold_stood(nc, stream) -> None:
    folded: list[str] = []
    fold = StreamFold(stream, lambda e: folded.append(e.tenant_id), heartbeat_s=0.3)
    await fold.start(nc, 10)
    try:
        await publish(nc, stream, tenant(0))
        assert await fold.sequence.reach(1, timeout_s=10)
        await nc.jetstream().delete_consumer(stream, fold._consumer)    # the server lost it (a restart)
        last = 0
        for i in range(1, 20):
            last = await publish(nc, stream, tenant(i))
        assert await fold.sequence.reach(last, timeout_s=10), "the fold caught up after its consumer vanished"
        assert folded == [f"t{i}" for i in range(20)] and fold.resets >= 1      # none missed, none twice
    finally:
        await fold.stop()


async def test_a_reset_leaves_one_consumer_behind_and_none_of_the_old_ones_can_reset_it_again(nc, stream) -> None:
    """A reset made a new consumer on the old one's inbox and left the old one alive (the inbox kept it from
    expiring): after a NATS node of a cluster died, a heartbeat of a stale consumer read as messages missed, reset
    the fold again, and one more consumer was left every 5 s, without end."""
    folded: list[str] = []
    fold = StreamFold(stream, lambda e: folded.append(e.tenant_id), heartbeat_s=0.3)
    await fold.start(nc, 10)
    try:
        js = nc.jetstream()
        for i in range(3):
            await publish(nc, stream, tenant(i))
            assert await fold.sequence.reach(i + 1, timeout_s=10)
            fold._reset("a test's")                                     # noqa: SLF001
            await fold._resetting                                       # noqa: SLF001
        assert fold.resets == 3
        assert (await js.stream_info(stream)).state.consumer_count == 1
        assert (await js.consumer_info(stream, fold._consumer)).name == fold._consumer    # noqa: SLF001
        resets = fold.resets
        await asyncio.sleep(1.0)                # several heartbeats: none of them resets the fold again
        assert fold.resets == resets
        await publish(nc, stream, tenant(3))
        assert await fold.sequence.reach(4, timeout_s=10)
        assert folded == ["t0", "t1", "t2", "t3"]
    finally:
        await fold.stop()
