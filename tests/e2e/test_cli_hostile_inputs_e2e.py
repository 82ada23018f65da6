"""`switchyard events dead-letters` on a real NATS of its own: entries on DEADLETTER that are not dead letters are
skipped and reported in one line while the letters are listed and sent back, and a NATS that is not there is one
line too."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import datetime, timezone

import pytest

from switchyard_gateway.cli import main
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventDeadLettered
from switchyard_gateway.contracts.events import subject_of
from switchyard_gateway.kit import natsio


async def test_junk_on_deadletter_is_skipped_while_the_letters_are_listed_and_sent_back(
        own_nats: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"hostile{uuid.uuid4().hex[:8]}"
    nc = await natsio.connect(own_nats, "tests", 10)
    try:
        await natsio.ensure_streams(nc)
        js = nc.jetstream()
        junk = await js.publish(f"{subjects.EVENT_DEAD_LETTERED}.{name}", b"\x00 not a letter")
        letter = EventDeadLettered(event_id=uuid.uuid4(), occurred_at=datetime.now(timezone.utc), consumer=name,
                                   stage="apply", error="boom \x1b[2J\nFAKE LINE", source="log", sequence=5)
        good = await js.publish(subject_of(letter), encode(letter))
        reply = await js.publish(f"{subjects.EVENT_DEAD_LETTERED}.{name}",
                                 b'{"type":"io.nats.jetstream.api.v1.stream_info_response","total":0}')
    finally:
        await nc.close()
    monkeypatch.setenv("SWITCHYARD_NATS_URL", own_nats)

    assert await asyncio.to_thread(main, ["events", "dead-letters", "--consumer", name]) == 0
    shown = capsys.readouterr()
    assert f"are not dead letters (sequence {junk.seq}, {reply.seq}): skipped" in shown.err, shown.err
    assert shown.out.count("\n") == 2 and r"boom \x1b[2J\nFAKE LINE" in shown.out, shown.out

    assert await asyncio.to_thread(main, ["events", "dead-letters", "--retry", str(good.seq)]) == 0
    sent = capsys.readouterr()
    assert f"dead letter {good.seq} ({name}, log:5): retry" in sent.out, sent


async def test_dead_letters_against_a_closed_port_says_where_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:           # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SWITCHYARD_NATS_URL", f"nats://ops:hunter2-secret@127.0.0.1:{port}")
    assert await asyncio.to_thread(main, ["events", "dead-letters"]) == 1
    err = capsys.readouterr().err
    line = f"switchyard: events dead-letters: NATS at nats://ops:***@127.0.0.1:{port} did not answer within 10 s"
    assert line in err and "hunter2" not in err and "Traceback" not in err, err
