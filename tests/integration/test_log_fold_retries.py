"""Retries are taken live by the folds that set events aside (on a NATS server of this module's own): two running
quota replicas each take `switchyard events dead-letters --retry` once, keep log order, set aside again what still
fails, and end where a fresh start ends; so do two running gateways' folds of REGISTRY, in stream order."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import msgspec

from switchyard_gateway.contracts import codec, subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import (
    ModelRegistered, ModelRemoved, TenantCreated, TenantRemoved, subject_of,
)
from switchyard_gateway.contracts.quota import LimitsUpdate, SetLimits
from switchyard_gateway.events.deadletter import DEAD_LETTERS
from switchyard_gateway.events.outbox import Outbox
from switchyard_gateway.events.project import lock_checkpoint, set_checkpoint
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.services.gateway.state.catalog import LocalState
from switchyard_gateway.services.quota.store import OUTBOX, LimitsStore
from tests.conftest import wait_for
from tests.integration.test_dead_letters import listed, retry


async def newer_limits(pool, nc, tenant: str, daily_tokens: int) -> int:
    """A LimitsSet as a newer quota replica records and publishes it: with a budget period this build does not read
    yet."""
    payload = {"type": subjects.LIMITS_SET, "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat(),
               "tenant_id": tenant, "model_id": "", "limits": {"daily_tokens": daily_tokens, "budget_period": "quarter"}}
    async with pool.acquire() as conn, conn.transaction():
        position = await conn.fetchval(
            "INSERT INTO events (event_id, type, tenant, occurred_at, payload) VALUES ($1, $2, $3, now(), $4)"
            " RETURNING position", uuid.UUID(payload["event_id"]), subjects.LIMITS_SET, tenant, json.dumps(payload))
        await lock_checkpoint(conn, OUTBOX)
        await nc.jetstream().publish(f"{subjects.LIMITS_SET}.{tenant}", json.dumps(payload).encode(),
                                     headers={subjects.MSG_ID_HEADER: payload["event_id"]})
        await set_checkpoint(conn, OUTBOX, position)
    return position


def learns_quarters(raw: dict) -> dict:
    """The fix: this build reads a quarter's budget as three months' (the upcast a release would ship)."""
    limits = dict(raw["limits"])
    if limits.get("budget_period") == "quarter":
        limits["budget_period"] = "month"
    return {**raw, "limits": limits}


async def taken(stores: list[LimitsStore], sequence: int) -> None:
    for store in stores:
        assert await store.limits.retried.reach(sequence, 20), "a replica did not take the retry"


async def retry_sequence(nc, letter_id: int) -> int:
    """The DEADLETTER sequence of the last retry asked for a dead letter."""
    [one] = [x for x in await listed(nc, OUTBOX) if x.id == letter_id]
    return one.retries[-1]


async def test_running_quota_replicas_take_a_retry_live_once_in_log_order(
        nats_client, pool, own_nats: str, monkeypatch) -> None:
    await natsio.ensure_streams(nats_client)
    replicas = [LimitsStore(pool, nats_client), LimitsStore(pool, nats_client)]
    for store in replicas:
        await store.load()
    following = [asyncio.ensure_future(store.outbox.follow_retries()) for store in replicas]
    counted = DEAD_LETTERS.labels(OUTBOX, "decode")._value.get()
    try:
        first = replicas[0]
        refused = await newer_limits(pool, nats_client, "t", 100)
        await first.set_limits(SetLimits(tenant_id="t", update=LimitsUpdate(daily_tokens=300)))   # after it in the log
        alone = await newer_limits(pool, nats_client, "u", 50)
        for store in replicas:
            await store.catch_up()
            assert store.limits.aside == {refused, alone}
            assert (store.book.tenant("t").daily_tokens, "u" in store.book.tenants) == (300, False)
        letters = await wait_for(lambda: _letters(nats_client, 2), 10, what="both events set aside once")
        assert [(x.letter.stage, x.letter.source, x.letter.sequence) for x in letters] == [
            ("decode", "log", refused), ("decode", "log", alone)]
        assert "quarter" in letters[0].letter.error
        await wait_for(lambda: DEAD_LETTERS.labels(OUTBOX, "decode")._value.get() == counted + 4, 10,
                       what="each replica counting what it set aside")

        # retried before the fix: each replica fails again and sets it aside again (one new dead letter)
        await retry(own_nats, monkeypatch, letters[1].id)
        await taken(replicas, await retry_sequence(nats_client, letters[1].id))
        again = await wait_for(lambda: _letters(nats_client, 3), 10, what="the retry set aside again")
        assert (again[2].letter.stage, again[2].letter.sequence) == ("decode", alone)
        assert all(store.limits.aside == {refused, alone} and "u" not in store.book.tenants for store in replicas)

        # the fix, then both retried: each running replica takes them without a restart
        monkeypatch.setitem(codec.UPCASTS, subjects.LIMITS_SET, learns_quarters)
        await retry(own_nats, monkeypatch, letters[0].id, again[2].id)
        await taken(replicas, await retry_sequence(nats_client, again[2].id))
        for store in replicas:
            assert store.limits.aside == set()
            assert store.book.tenant("u").daily_tokens == 50
            # the later LimitsSet still wins: the retried one did not overwrite what came after it
            assert store.book.tenant("t").daily_tokens == 300
        versions = [store.book.version for store in replicas]

        # a second retry of an event already taken changes nothing
        await retry(own_nats, monkeypatch, letters[1].id)
        await taken(replicas, await retry_sequence(nats_client, letters[1].id))
        assert [store.book.version for store in replicas] == versions
        assert len(await listed(nats_client, OUTBOX)) == 3

        # what the running replicas hold is what a fresh start reads from the log
        fresh = LimitsStore(pool, nats_client)
        await fresh.load()
        for store in replicas:
            assert (store.book.tenants, store.book.models) == (fresh.book.tenants, fresh.book.models)
    finally:
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)


async def test_a_retried_event_is_followed_by_the_later_events_again_and_taken_once(
        nats_client, pool, own_nats: str, monkeypatch) -> None:
    """The kit alone, with an apply that refuses to create some tenants until fixed: a tenant created (refused)
    and then removed stays removed once the retry is taken, as in log order; an event before it is not applied
    again; a tenant refused last is there once its retry is taken, and retrying it again changes nothing."""
    await natsio.ensure_streams(nats_client)
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, [TenantCreated(tenant_id="keep"), TenantCreated(tenant_id="gone"),
                                     TenantRemoved(tenant_id="gone"), TenantCreated(tenant_id="late")])
    created: dict[str, int] = {}
    broken = {"gone", "late"}

    def apply(event) -> None:
        if isinstance(event, TenantCreated):
            if event.tenant_id in broken:
                raise LookupError(f"no bucket for {event.tenant_id}")
            created[event.tenant_id] = created.get(event.tenant_id, 0) + 1
        else:
            created.pop(event.tenant_id, None)

    name = f"registry.outbox.{uuid.uuid4().hex[:6]}"
    outbox = Outbox(pool, nats_client, name=name, stream=subjects.STREAM_REGISTRY,
                    types={subjects.TENANT_CREATED, subjects.TENANT_REMOVED}, apply=apply, lock=0x5359_5445_53)
    await outbox.start()
    following = asyncio.ensure_future(outbox.follow_retries())
    try:
        assert (outbox.fold.aside, created) == ({2, 4}, {"keep": 1})
        letters = await wait_for(lambda: _letters(nats_client, 2, name), 10, what="two dead letters")
        assert "LookupError: no bucket for gone" in letters[0].letter.error
        broken.clear()                                                    # the fix
        await retry(own_nats, monkeypatch, letters[0].id)
        assert await outbox.fold.retried.reach(await _last_retry(nats_client, name), 20)
        assert (outbox.fold.aside, created) == ({4}, {"keep": 1})
        await retry(own_nats, monkeypatch, letters[1].id, letters[0].id)
        assert await outbox.fold.retried.reach(await _last_retry(nats_client, name), 20)
        assert (outbox.fold.aside, created) == (set(), {"keep": 1, "late": 1})
        await retry(own_nats, monkeypatch, letters[1].id)
        assert await outbox.fold.retried.reach(await _last_retry(nats_client, name), 20)
        assert created == {"keep": 1, "late": 1}
        assert [msgspec.json.decode(x.letter.data)["tenant_id"] for x in await listed(nats_client, name)] == [
            "gone", "late"]
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_running_gateways_take_a_retry_of_their_fold_of_the_registry_live_in_stream_order(
        own_nats: str, monkeypatch) -> None:
    """Models of a kind this gateway build does not read are set aside by both replicas' catalogs (`gateway:REGISTRY`),
    which go on; after the fix, `--retry` has each running replica take them again in stream order (a model removed
    after it stays removed), with no copy published on the stream; a second retry changes nothing."""
    ncs = [await natsio.connect(own_nats, "gateway", 10) for _ in range(2)]
    replicas = [LocalState(), LocalState()]
    try:
        await natsio.ensure_streams(ncs[0])
        js = ncs[0].jetstream()
        await js.purge_stream(subjects.STREAM_REGISTRY)
        for state, nc in zip(replicas, ncs, strict=True):
            await state.start(nc)
        for model_id in ("rerank-gone", "rerank-1"):
            newer = {"type": subjects.MODEL_REGISTERED, "event_id": str(uuid.uuid4()),
                     "occurred_at": datetime.now(UTC).isoformat(), "model_id": model_id, "kind": "rerank"}
            await js.publish(f"{subjects.MODEL_REGISTERED}.{model_id}", json.dumps(newer).encode())
            if model_id == "rerank-gone":
                await js.publish(*_published(ModelRemoved(model_id=model_id)))
        last = await js.publish(*_published(ModelRegistered(model_id="chat-1")))
        for state in replicas:
            assert await state.feed.sequence.reach(last.seq, 10)
            assert (set(state.catalog.models), state.feed.aside) == ({"chat-1"}, {last.seq - 3, last.seq - 1})
        letters = await wait_for(lambda: _letters(ncs[0], 2, "gateway:REGISTRY"), 10, what="both models set aside")
        assert [(x.letter.stage, x.letter.source, x.letter.sequence) for x in letters] == [
            ("decode", "REGISTRY", last.seq - 3), ("decode", "REGISTRY", last.seq - 1)]

        monkeypatch.setitem(codec.UPCASTS, subjects.MODEL_REGISTERED, lambda raw: {**raw, "kind": "embedding"})  # fix
        await retry(own_nats, monkeypatch, letters[0].id, letters[1].id)
        sequence = await _last_retry(ncs[0], "gateway:REGISTRY")
        for state in replicas:
            assert await state.feed.retried.reach(sequence, 20), "a replica did not take the retry"
            assert (set(state.catalog.models), state.feed.aside) == ({"chat-1", "rerank-1"}, set())
        assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.last_seq == last.seq     # no copy published
        versions = [state.catalog.version for state in replicas]

        await retry(own_nats, monkeypatch, letters[0].id)
        sequence = await _last_retry(ncs[0], "gateway:REGISTRY")
        for state in replicas:
            assert await state.feed.retried.reach(sequence, 20)
        assert [state.catalog.version for state in replicas] == versions
        fresh = LocalState()
        await fresh.start(ncs[1])
        assert fresh.catalog.models == replicas[0].catalog.models == replicas[1].catalog.models
        await fresh.feed.stop()
    finally:
        for state in replicas:
            await state.feed.stop()
        for nc in ncs:
            await nc.close()


def _published(event) -> tuple[str, bytes]:
    return subject_of(event), encode(event)


async def _letters(nc, count: int, consumer: str = OUTBOX):
    letters = await listed(nc, consumer)
    return letters if len(letters) == count else None


async def _last_retry(nc, consumer: str) -> int:
    return max(seq for x in await listed(nc, consumer) for seq in x.retries)
