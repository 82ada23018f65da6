"""What a service answers over NATS can never take its connection down, nor land where the asker points it.

nats-server closes a connection that sends a message larger than `max_payload`, and nats-py does not reconnect after
that: one subscriber request echoed in an error answer (600 KB of a refused enum value, twice: header and body) cut
metering off NATS for good. A request refused as busy was answered on any reply subject, a stream's included."""

from __future__ import annotations

import asyncio
import signal
import uuid

import msgspec
import nats
import pytest
import structlog

from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.kit import natsio, service
from switchyard_gateway.kit.natsio import ServiceError
from tests.conftest import wait_for


class Deal(msgspec.Struct):
    kind: str
    size: int = 0


_deal = msgspec.json.Decoder(Deal)


async def _handler(gate: asyncio.Event, data: bytes, subject: str, reply: str) -> bytes:
    deal = _deal.decode(data)
    if deal.kind == "echo":                  # a refusal that repeats what it was given
        raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"not a kind: {'x' * deal.size}"))
    if deal.kind == "big":
        return b"y" * deal.size
    if deal.kind == "wait":
        await gate.wait()
    return b"ok"


@pytest.fixture
async def served(own_nats: str):
    nc = await natsio.connect(own_nats, "answers-tests", 10)
    gate = asyncio.Event()
    subject = f"answers{uuid.uuid4().hex[:6]}.*"
    rule = {subject: lambda asked, reply: None if reply.startswith("_INBOX.mine") else "not the asker's"}
    svc = await natsio.serve(nc, "answers", {}, by_subject={subject: lambda *a: _handler(gate, *a)},
                             at_once={subject: 1}, reply_rules=rule)
    yield nc, subject.replace("*", "x"), gate
    gate.set()
    await svc.stop()  # type: ignore[attr-defined]
    await nc.close()


async def test_answers_larger_than_a_message_are_refused_short_and_the_connection_stays(served, own_nats) -> None:
    nc, subject, _gate = served
    asker = await nats.connect(own_nats, inbox_prefix="_INBOX.mine")
    try:
        limit = nc.max_payload
        echoed = await asker.request(subject, msgspec.json.encode(Deal("echo", limit - 200)), timeout=5)
        assert echoed.headers[natsio.subjects.SERVICE_ERROR_CODE_HEADER] == "400"
        assert len(echoed.data) + len(echoed.headers[natsio.subjects.SERVICE_ERROR_HEADER]) < 20_000
        big = await asker.request(subject, msgspec.json.encode(Deal("big", limit + 10)), timeout=5)
        assert big.headers[natsio.subjects.SERVICE_ERROR_CODE_HEADER] == "500"
        assert msgspec.json.decode(big.data)["code"] == "ANSWER_TOO_LARGE"
        await asyncio.sleep(0.2)
        assert nc.is_connected, "the service's connection survived both"
        assert (await asker.request(subject, msgspec.json.encode(Deal("fine")), timeout=5)).data == b"ok"
    finally:
        await asker.close()


async def test_a_busy_refusal_goes_to_no_reply_subject_the_asker_may_not_name(served, own_nats) -> None:
    nc, subject, gate = served
    asker = await nats.connect(own_nats, inbox_prefix="_INBOX.mine")
    heard: list[str] = []

    async def hear(msg) -> None:
        heard.append(msg.subject)

    for target in ("usage.forged", "_INBOX.other.>", "_INBOX.mine.>"):
        await nc.subscribe(target, cb=hear)
    await nc.flush()
    refused = natsio.REFUSED_REPLIES.labels("answers")
    before = refused._value.get()
    try:
        holding = asyncio.ensure_future(asker.request(subject, msgspec.json.encode(Deal("wait")), timeout=10))
        await asyncio.sleep(0.2)                          # the one slot is taken: the next ones are busy
        for reply in ("usage.forged", "_INBOX.other.x"):
            await asker.publish(subject, msgspec.json.encode(Deal("fine")), reply=reply)
        await asker.publish(subject, msgspec.json.encode(Deal("fine")), reply="_INBOX.mine.busy")
        await asker.flush()
        assert await wait_for(lambda: "_INBOX.mine.busy" in heard, timeout_s=5)
        assert refused._value.get() - before == 2
        assert heard.count("_INBOX.mine.busy") == 1 and "usage.forged" not in heard and "_INBOX.other.x" not in heard
        gate.set()
        assert (await holding).data == b"ok"
    finally:
        await asker.close()


async def test_a_service_whose_connection_the_server_closed_exits_to_be_started_again(own_nats, monkeypatch) -> None:
    """The server closing a service's connection for a protocol error left it half alive for good (no reconnect):
    it ends itself, as when a background loop dies, so that its supervisor starts it again. Its own close does not."""
    signalled: list[int] = []
    monkeypatch.setattr(service.os, "kill", lambda pid, sig: signalled.append(sig))
    monkeypatch.setattr(service.logs, "configure", lambda *a, **k: structlog.get_logger())
    settings = service.ServiceSettings(nats_url=own_nats, connect_timeout_s=10)
    runtime = await service.open_runtime("answers-runtime", settings, database=False)
    with structlog.testing.capture_logs() as logs:
        # headers past max_payload, as a letter of a near-limit message had: nats-py checks the body alone
        await runtime.nc.publish("answers.too.large", b"z" * (runtime.nc.max_payload - 10), headers={"a": "b" * 100})
        assert await wait_for(lambda: signalled, timeout_s=10)
    assert signalled == [signal.SIGTERM] and runtime.nc.is_closed
    assert [e for e in logs if e["event"] == "nats.closed_for_good"]

    calm = await service.open_runtime("answers-runtime", settings, database=False)
    signalled.clear()
    await service.close_runtime(calm)
    await asyncio.sleep(0.2)
    assert calm.nc.is_closed and signalled == []


async def test_a_request_its_asker_stopped_waiting_for_is_not_carried_out(own_nats: str) -> None:
    """A command that reached its service after its asker had been told 503 (held up by a frozen NATS node, or
    waiting its turn behind a slow one) was carried out all the same: the change an operator was told had not
    been made was made."""
    nc = await natsio.connect(own_nats, "deadline-tests", 10)
    gate, done = asyncio.Event(), []
    subject = f"deadline{uuid.uuid4().hex[:6]}"

    async def handler(data: bytes) -> bytes:
        if data == b"slow":
            await gate.wait()
        done.append(data)
        return b"done"

    svc = await natsio.serve(nc, "deadline", {subject: handler})       # one request after another
    try:
        slow = asyncio.ensure_future(natsio.request(nc, subject, b"slow", 10))
        await asyncio.sleep(0.1)
        with pytest.raises(natsio.ServiceUnavailable):
            await natsio.request(nc, subject, b"late", 0.2)             # waits behind the slow one, then gives up
        await asyncio.sleep(natsio.DEADLINE_SLACK_S + 0.3)
        gate.set()
        assert await slow == b"done"
        assert await natsio.request(nc, subject, b"in time", 5) == b"done"
        # an asker that names no deadline, or one that is no time, is served whenever its request comes
        for header in ({}, {"Switchyard-Deadline": "soon"}):
            assert (await nc.request(subject, b"no deadline", timeout=5, headers=header)).data == b"done"
        assert done == [b"slow", b"in time", b"no deadline", b"no deadline"]
        assert natsio.EXPIRED.labels("deadline")._value.get() == 1
    finally:
        gate.set()
        await svc.stop()  # type: ignore[attr-defined]
        await nc.close()


async def test_a_request_that_fits_only_without_its_deadline_is_refused_before_it_is_sent(served) -> None:
    """The deadline's header counts against max_payload too: a request the body alone let through made the server
    close the asker's connection (an admin write near the limit took a gateway off NATS for good)."""
    nc, subject, _gate = served
    with pytest.raises(ServiceError) as refused:
        await natsio.request(nc, subject, b"x" * (nc.max_payload - 10), 5)
    assert refused.value.status == 413 and refused.value.body.code == "PAYLOAD_TOO_LARGE"
    await asyncio.sleep(0.2)
    assert nc.is_connected
