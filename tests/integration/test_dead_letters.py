"""Poison events cannot block the kit's consumers (on a NATS server of this module's own): the usage ingest, a fold of
a stream and a fold of the log set aside what they cannot decode or apply on DEADLETTER, count it, go on, and take
it again when `switchyard events dead-letters --retry` sends it back after a fix."""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from switchyard_gateway.cli import deadletters, main
from switchyard_gateway.contracts import codec, subjects
from switchyard_gateway.contracts.codec import encode, encode_batch
from switchyard_gateway.contracts.events import TenantCreated
from switchyard_gateway.events import LogFold, StreamFold
from switchyard_gateway.events.deadletter import DEAD_LETTERS, DeadLetters
from switchyard_gateway.kit import eventlog
from switchyard_gateway.services.metering.projections import PROJECTIONS
from tests.conftest import wait_for
from tests.integration.logharness import Metering, usage


async def listed(nc, consumer: str) -> list[deadletters.Letter]:
    return await deadletters.read(nc, consumer)


async def retry(own_nats: str, monkeypatch, *ids: int) -> None:
    monkeypatch.setenv("SWITCHYARD_NATS_URL", own_nats)
    assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", *map(str, ids)]) == 0


async def calls(pool) -> int:
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT coalesce(sum(calls), 0) FROM tenant_token_counts")


async def test_the_usage_ingest_sets_aside_what_it_cannot_take_goes_on_and_takes_it_again_after_a_fix(
        nats_client, pool, database_url: str, own_nats: str, monkeypatch) -> None:
    harness = Metering(nats_client, pool, database_url)
    await harness.start(ingest=True)
    js = nats_client.jetstream()
    counted = DEAD_LETTERS.labels(subjects.CONSUMER_METERING, "decode")._value.get()
    try:
        good = [usage(i, "acme") for i in range(3)]
        newer = {"type": "usage.recorded.v9", "request_id": "v9", "tenant_id": "acme", "key_id": "k", "model": "m",
                 "api": "openai.chat", "outcome": "ok", "status": 200, "input_tokens": 5, "output_tokens": 5,
                 "event_id": str(uuid.uuid4()), "occurred_at": "2026-05-01T08:00:00Z"}
        batch = encode_batch(good[:2])[:-1] + b"," + msgspec.json.encode(newer) + b"]"    # one item of a batch
        await js.publish("usage.recorded.v2.acme", batch)
        await js.publish("usage.recorded.v2.acme", b"\x00 not json")                        # a whole message
        nul = msgspec.structs.replace(usage(9, "acme"), tenant_id="ac\x00me")               # PostgreSQL refuses it
        await js.publish("usage.recorded.v2.acme", encode_batch([good[2], nul]))
        await wait_for(lambda: _equal(calls(pool), 3), 20, what="the good events committed")

        async def three_letters() -> list | None:       # the last is set aside once its batch's others committed
            found = await listed(nats_client, subjects.CONSUMER_METERING)
            return found if len(found) >= 3 else None

        letters = await wait_for(three_letters, 20, what="the three dead letters")
        assert [(x.letter.stage, x.letter.source, x.letter.subject) for x in letters] == [
            ("decode", "USAGE", "usage.recorded.v2.acme")] * 2 + [("apply", "USAGE", "usage.recorded.v2.acme")]
        assert msgspec.json.decode(letters[0].letter.data)["request_id"] == "v9"
        assert letters[1].letter.data == b"\x00 not json"
        assert "invalid byte sequence" in letters[2].letter.error or "0x00" in letters[2].letter.error
        assert DEAD_LETTERS.labels(subjects.CONSUMER_METERING, "decode")._value.get() == counted + 2

        # the fix: this build learns to read usage.recorded.v9 (an upcast), then the dead letter is sent back
        monkeypatch.setitem(codec.UPCASTS, "usage.recorded.v9", lambda raw: {**raw, "type": subjects.USAGE_RECORDED})
        await retry(own_nats, monkeypatch, letters[0].id)
        await wait_for(lambda: _equal(calls(pool), 4), 20, what="the retried event committed")
        again = await listed(nats_client, subjects.CONSUMER_METERING)
        assert [len(x.retries) for x in again] == [1, 0, 0]
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM events WHERE payload->>'request_id' = 'v9'") == 1
    finally:
        await harness.stop()


async def test_a_projection_that_fails_on_one_event_does_not_hold_back_the_others(
        nats_client, pool, database_url: str, own_nats: str, monkeypatch) -> None:
    harness = Metering(nats_client, pool, database_url)
    cost = PROJECTIONS["token_counts"]
    real = type(cost).apply

    async def broken(self, conn, batch):            # a bug that one tenant's events trip over
        if any(getattr(e, "tenant_id", "") == "poison" for _, e in batch):
            raise ValueError("no such tenant bucket")
        await real(self, conn, batch)

    monkeypatch.setattr(type(cost), "apply", broken)
    await harness.start(ingest=True)
    try:
        events = [usage(1, "acme"), usage(2, "poison"), usage(3, "acme")]
        await nats_client.jetstream().publish("usage.recorded.v2.acme", encode_batch(events))
        await wait_for(lambda: _equal(calls(pool), 2), 20, what="the two good events")
        letters = await listed(nats_client, subjects.CONSUMER_METERING)
        assert [(x.letter.stage, msgspec.json.decode(x.letter.data)["tenant_id"]) for x in letters] == [("apply", "poison")]
        assert "ValueError: no such tenant bucket" in letters[0].letter.error
        monkeypatch.setattr(type(cost), "apply", real)                  # the fix
        await retry(own_nats, monkeypatch, letters[0].id)
        await wait_for(lambda: _equal(calls(pool), 3), 20, what="the fixed event")
    finally:
        await harness.stop()


async def test_a_fold_of_a_stream_sets_aside_and_goes_on(nats_client, own_nats: str, monkeypatch) -> None:
    from switchyard_gateway.kit import natsio

    await natsio.ensure_streams(nats_client)
    await nats_client.jetstream().purge_stream(subjects.STREAM_REGISTRY)
    seen: list[str] = []

    def fold(event) -> None:
        if event.tenant_id == "fussy":
            raise KeyError("fussy")
        seen.append(event.tenant_id)

    folding = StreamFold(subjects.STREAM_REGISTRY, fold, name="gateway:REGISTRY")
    await folding.start(nats_client)
    try:
        js = nats_client.jetstream()
        await js.publish("tenant.created.v1.x", b'{"type": "tenant.created.v1", "tenant_id": 7}')
        await js.publish("tenant.created.v1.fussy", encode(TenantCreated(tenant_id="fussy")))
        last = await js.publish("tenant.created.v1.acme", encode(TenantCreated(tenant_id="acme")))
        assert await folding.sequence.reach(last.seq, 10)
        assert seen == ["acme"]
        letters = await listed(nats_client, "gateway:REGISTRY")
        assert [(x.letter.stage, x.letter.sequence) for x in letters] == [("decode", last.seq - 2), ("apply", last.seq - 1)]
        seen.clear()
        folding.fold = lambda event: seen.append(event.tenant_id)          # the fix
        await retry(own_nats, monkeypatch, letters[1].id)
        # the fold takes its own retry: the event again, then what it had folded after it, in stream order
        await wait_for(lambda: seen == ["fussy", "acme"], 10, what="the retried event folded, then the later one")
        assert (await js.stream_info(subjects.STREAM_REGISTRY)).state.last_seq == last.seq     # nothing published
    finally:
        await folding.stop()


async def test_a_fold_of_the_log_sets_aside_an_event_its_apply_refuses_and_goes_on(pool, nats_client) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, [TenantCreated(tenant_id=t) for t in ("a1", "bad", "a2")])
    seen: list[str] = []

    def apply(event) -> None:
        if event.tenant_id == "bad":
            raise RuntimeError("cannot")
        seen.append(event.tenant_id)

    name = f"registry.outbox.{uuid.uuid4().hex[:6]}"
    fold = LogFold({subjects.TENANT_CREATED}, apply, name=name, letters=DeadLetters(nats_client, name))
    async with pool.acquire() as conn:
        assert await fold.catch_up(conn) == 3
    assert seen == ["a1", "a2"]
    await wait_for(lambda: _listed_one(nats_client, name), 10, what="the dead letter kept")


async def _listed_one(nc, name: str) -> bool:
    letters = await listed(nc, name)
    return [(x.letter.stage, x.letter.source, x.letter.sequence) for x in letters] == [("apply", "log", 2)]


async def _equal(value, expected) -> bool:
    return await value == expected


async def test_listing_dead_letters_leaves_the_stacks_streams_as_they_are(nats_client, own_nats: str,
                                                                           monkeypatch) -> None:
    """The listing made sure the streams existed by creating or updating each with this tool's defaults: on a
    three-node cluster it scaled every stream down to one replica; here, a stream an operator tuned is put back."""
    from switchyard_gateway.kit import natsio

    await natsio.ensure_streams(nats_client)
    js = nats_client.jetstream()
    tuned = (await js.stream_info(subjects.STREAM_LOG)).config
    tuned.max_age = 7200.0                      # the operator keeps the feed two hours instead of one
    await js.update_stream(tuned)
    monkeypatch.setenv("SWITCHYARD_NATS_URL", own_nats)
    assert await asyncio.to_thread(main, ["events", "dead-letters"]) == 0
    assert (await js.stream_info(subjects.STREAM_LOG)).config.max_age == 7200.0


async def test_an_operator_removes_dead_letters_with_their_retries(nats_client, own_nats: str, monkeypatch,
                                                                    capsys) -> None:
    """A letter could only be retried: the ones a consumer will never take again stayed for good (and a
    subscriber's counted against its room for more). `--remove` deletes letters and the retries asked for them."""
    from switchyard_gateway.kit import natsio

    await natsio.ensure_streams(nats_client)
    name = f"removal{uuid.uuid4().hex[:6]}"
    letters = DeadLetters(nats_client, name)
    first = await letters.put(stage="apply", error="one", source="log", sequence=1, data=b"{}")
    second = await letters.put(stage="apply", error="two", source="log", sequence=2, data=b"{}")
    await retry(own_nats, monkeypatch, first)
    [asked] = [one.retries for one in await listed(nats_client, name) if one.id == first]
    assert len(asked) == 1
    assert await asyncio.to_thread(main, ["events", "dead-letters", "--remove", str(first)]) == 0
    assert [one.id for one in await listed(nats_client, name)] == [second]
    js = nats_client.jetstream()
    waiting = (await js.stream_info(subjects.STREAM_DEADLETTER, subjects_filter=f"*.*.*.{name}")).state.subjects
    assert waiting == {f"{subjects.EVENT_DEAD_LETTERED}.{name}": 1}, "its retry went with it"
    assert await asyncio.to_thread(main, ["events", "dead-letters", "--remove", str(first)]) == 2
    capsys.readouterr()
    # ids that are there are retried, and those that are not are named
    assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", str(second), "99999999"]) == 2
    said = capsys.readouterr()
    assert f"dead letter {second} " in said.out and "no dead letter 99999999" in said.err, said
