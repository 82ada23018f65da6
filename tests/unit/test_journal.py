"""The gateway's journal on its own: what a process that dies leaves, and what its next life makes of it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import msgspec
import pytest

from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.pipeline.call import Call, InferenceRequest, Outcome
from switchyard_gateway.services.gateway.pipeline.journal import Journal, JournalBusy
from switchyard_gateway.services.gateway.pipeline.journal_records import segments
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door

BODY = b'{"model": "m1", "stream": true, "messages": [{"role": "user", "content": "' + b"x" * 400 + b'"}]}'


def a_call(request_id: str, tenant: str = "acme") -> Call:
    request = msgspec.json.decode(BODY, type=InferenceRequest)
    return Call(Door("/v1/chat/completions", request, BODY), tenant, "sy-key1", request, request_id, BODY,
                time.perf_counter())


def finished(call: Call, outcome: str = "ok", tokens: int = 7) -> UsageRecorded:
    return UsageRecorded(event_id=call.event_id, request_id=call.request_id, tenant_id=call.tenant_id,
                         key_id=call.key_id, model="m1", api=call.api, outcome=outcome, status=200,  # type: ignore[arg-type]
                         input_tokens=tokens, output_tokens=tokens)


def die(journal: Journal) -> None:
    """What kill -9 leaves: whatever was written, nothing flushed by a close, the lock let go by the kernel."""
    files = journal.files
    os.close(files._fd)              # noqa: SLF001
    assert files._lock_fd is not None    # noqa: SLF001
    os.close(files._lock_fd)         # noqa: SLF001


async def next_life(first: Journal, directory: Path) -> Journal:
    """What the next process finds (not yet opened) once `first` has written this turn's records and died."""
    await turn()
    die(first)
    return Journal(directory, "gw-1")


async def turn() -> None:
    """Let the event loop run the journal's batched write."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_next_life_publishes_what_was_not_acknowledged_and_interrupts_what_was_in_flight(tmp_path: Path) -> None:
    first = Journal(tmp_path, "gw-1", estimator=TokenEstimator())
    assert await first.open() == 0
    done, unacked, running, refused, long_running = (a_call(f"r{i}") for i in range(5))
    for call in (done, unacked, running, refused, long_running):
        first.accepted(call, "m1")
    first.refused(refused)
    first.finished(finished(done))
    first.finished(finished(unacked))
    first.acknowledged([done.event_id])
    outcome = Outcome("m1")
    outcome.status, outcome.output_tokens, outcome.attempts = 200, 0, 1
    first.serving(long_running, outcome)
    first.in_flight[long_running.event_id].accepted.at -= 5          # it has run for a while
    outcome.stream_tap = type("Tap", (), {"content_events": 12})()
    first.note_progress(time.time())
    second = await next_life(first, tmp_path)
    assert await second.open() == 3
    published = {event.event_id: event for event, _ in second.take_parked(100)}
    assert set(published) == {unacked.event_id, running.event_id, long_running.event_id}
    assert published[unacked.event_id].outcome == "ok"            # as it was written, under its own id
    cut = published[running.event_id]
    assert (cut.outcome, cut.request_id, cut.tenant_id, cut.estimated) == ("interrupted", "r2", "acme", True)
    assert cut.input_tokens == len(BODY) // 4 and cut.output_tokens == 0 and cut.stream
    streamed = published[long_running.event_id]
    assert (streamed.outcome, streamed.status, streamed.output_tokens, streamed.attempts) == ("interrupted", 200, 12, 1)
    assert 0 < streamed.input_tokens < len(BODY) // 4              # counted, not four bytes a token
    assert second.parked == {} and len(second.unacknowledged) == 3

    second.acknowledged(list(published))
    second.close()
    assert segments(second.directory) == []                        # nothing left to do: nothing left on disk


async def test_a_stream_cut_in_its_first_second_is_billed_what_it_had_sent(tmp_path: Path) -> None:
    """Progress was written only for calls older than a second: a stream whose gateway died in its first second
    was billed no output, whatever it had sent. A stream with output is written at the next tick, however young;
    a young call with nothing sent yet still is not."""
    first = Journal(tmp_path, "gw-1", estimator=TokenEstimator())
    await first.open()
    for request_id, sent in (("young", 9), ("waiting", 0)):
        call, outcome = a_call(request_id), Outcome("m1")
        first.accepted(call, "m1")
        outcome.status, outcome.attempts = 200 if sent else 0, 1
        outcome.stream_tap = type("Tap", (), {"content_events": sent})()
        first.serving(call, outcome)
    first.note_progress(time.time())
    second = await next_life(first, tmp_path)
    assert await second.open() == 2
    published = {event.request_id: event for event, _ in second.take_parked(10)}
    assert (published["young"].status, published["young"].output_tokens) == (200, 9)
    assert (published["waiting"].status, published["waiting"].output_tokens) == (0, 0)
    second.close()


async def test_a_call_cut_before_its_first_progress_is_charged_its_counted_prompt_not_its_body(tmp_path: Path) -> None:
    """A call whose gateway died before the journal wrote its progress was charged a token per four bytes of its
    whole body: a 300 KB image made 75,056 input tokens (a 24-token call), past the tenant's daily limit at once.
    It is charged the prompt the reservation counted (an image as SWITCHYARD_IMAGE_TOKENS)."""
    image = "data:image/png;base64," + "A" * 300_000
    body = msgspec.json.encode({"model": "m1", "stream": True, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture"}, {"type": "image_url", "image_url": {"url": image}}]}]})
    request = msgspec.json.decode(body, type=InferenceRequest)
    ask = Door("/v1/chat/completions", read_request("openai.chat", body), body).ask(1 << 30, TokenEstimator())
    call = Call(Door("/v1/chat/completions", request, body), "acme", "sy-key1", request, "pictured", body,
                time.perf_counter(), ask=ask)
    first = Journal(tmp_path, "gw-1", estimator=TokenEstimator())
    await first.open()
    first.accepted(call, "m1", call.ask.counted_tokens())        # as the proxy journals a call its limits count
    await turn()
    die(first)

    second = Journal(tmp_path, "gw-1")
    assert await second.open() == 1
    [(cut, _)] = second.take_parked(10)
    assert cut.outcome == "interrupted" and cut.input_tokens == call.ask.counted_tokens()
    assert cut.input_tokens < 5_000 < len(body) // 4
    second.close()


async def test_a_life_that_dies_again_before_publishing_leaves_the_same_events(tmp_path: Path) -> None:
    first = Journal(tmp_path, "gw")
    await first.open()
    call = a_call("again")
    first.accepted(call, "m1")
    await turn()
    die(first)
    for _ in range(3):                                               # three lives die before publishing anything
        life = Journal(tmp_path, "gw")
        assert await life.open() == 1
        die(life)
    last = Journal(tmp_path, "gw")
    await last.open()
    (event, _), = last.take_parked(10)
    assert event.event_id == call.event_id and event.outcome == "interrupted"
    last.close()


async def test_segments_roll_over_carry_calls_in_flight_and_are_deleted_once_acknowledged(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "gw", segment_bytes=4096)
    await journal.open()
    long = a_call("long")
    journal.accepted(long, "m1")
    for i in range(200):
        call = a_call(f"c{i}")
        journal.accepted(call, "m1")
        await turn()
        journal.finished(finished(call))
        await turn()
        journal.acknowledged([call.event_id])
        await turn()
    assert journal.files.segment > 10
    assert len(segments(journal.directory)) <= 2                     # the old ones went as they were done
    die(journal)
    after = Journal(tmp_path, "gw")
    assert await after.open() == 1
    (event, _), = after.take_parked(10)
    assert event.event_id == long.event_id and event.outcome == "interrupted"
    after.close()


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "gw")
    await journal.open()
    call = a_call("torn")
    journal.accepted(call, "m1")
    await turn()
    die(journal)
    with open(segments(journal.directory)[-1], "ab") as segment:
        segment.write(b'["f",{"type":"usage.rec')                    # a machine crash mid-write
    after = Journal(tmp_path, "gw")
    assert await after.open() == 1
    after.close()


async def test_a_sibling_that_stopped_is_adopted_and_a_running_one_is_not(tmp_path: Path) -> None:
    mine, running, gone = Journal(tmp_path, "gw-1"), Journal(tmp_path, "gw-2"), Journal(tmp_path, "gw-3")
    for journal in (mine, running, gone):
        await journal.open()
    running.accepted(a_call("busy"), "m1")
    lost = a_call("lost")
    gone.accepted(lost, "m1")
    await turn()
    die(gone)
    assert mine.adopt_orphans() == 1
    (event, _), = mine.take_parked(10)
    assert event.event_id == lost.event_id
    assert segments(gone.directory) == [] and segments(running.directory) != []
    with pytest.raises(JournalBusy):
        await Journal(tmp_path, "gw-2", lock_wait_s=0.2).open()
    running.close()
    mine.close()


async def test_usage_an_earlier_version_spooled_is_taken_over(tmp_path: Path) -> None:
    event = finished(a_call("spooled"))
    (tmp_path / "usage-123-456.jsonl").write_bytes(encode(event) + b"\n")
    journal = Journal(tmp_path, "gw")
    assert await journal.open() == 1
    assert [e.event_id for e, _ in journal.take_parked(10)] == [event.event_id]
    assert not list(tmp_path.glob("usage-*"))
    journal.close()


async def test_with_fsync_a_call_is_dispatched_only_once_its_acceptance_is_on_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "gw", fsync=True)
    await journal.open()
    number = journal.accepted(a_call("synced"), "m1")
    await asyncio.wait_for(journal.written(number), 5)
    assert journal.files._durable >= number      # noqa: SLF001
    journal.close()


async def test_with_fsync_an_acceptance_is_written_at_once_and_syncs_while_the_call_goes_on(tmp_path: Path) -> None:
    """The acceptance is in the file before the loop turns (a killed process cannot lose it), its sync runs
    meanwhile, and `pending` is what the call awaits before it goes upstream."""
    journal = Journal(tmp_path, "gw", fsync=True)
    await journal.open()
    call = a_call("overlapped")
    number = journal.accepted(call, "m1")
    syncing = journal.pending(number)
    assert syncing is not None and not syncing.done()
    die(journal)                                  # before any loop turn: what kill -9 leaves now
    second = Journal(tmp_path, "gw", fsync=True, estimator=TokenEstimator())
    assert await second.open() == 1
    assert [e.request_id for e, _ in second.take_parked(10)] == ["overlapped"]
    await asyncio.wait_for(syncing, 5)            # the first life's sync ends all the same
    second.close()


async def test_with_fsync_a_quiet_journal_syncs_in_the_loop_and_a_busy_or_slow_one_in_a_thread(
        tmp_path: Path) -> None:
    """One call in flight: nothing else needs the loop, and the sync runs there, after the loop turn's other
    writes (the hand-off to a thread and back cost more than the sync). Two in flight: in a thread, so the loop
    serves the other meanwhile. A disk whose recent syncs were slow is synced in a thread, quiet or not."""
    journal = Journal(tmp_path, "gw", fsync=True)
    await journal.open()
    files = journal.files
    files.datasync = lambda fd: None        # where a sync runs is decided by how long the last ones took: a busy
    files.recent_sync_s.clear()             # disk (the whole suite beside it) must not decide it here
    first = a_call("alone")
    syncing = journal.pending(journal.accepted(first, "m1"))
    assert syncing is not None and not syncing.done()
    await turn()                                    # the turn's writes first: it waits one more turn
    await asyncio.wait_for(syncing, 5)
    assert files.syncs == {"loop": 1, "thread": 0}
    second = a_call("beside")
    await asyncio.wait_for(journal.written(journal.accepted(second, "m1")), 5)
    assert files.syncs == {"loop": 1, "thread": 1}, "two calls in flight: the other one needs the loop"
    for call in (first, second):
        journal.finished(finished(call))
    await asyncio.wait_for(journal.written(files.appended), 5)

    def slow_disk(fd: int) -> None:
        time.sleep(0.01)
        os.fdatasync(fd)

    files.datasync = slow_disk
    before = dict(files.syncs)
    slow = a_call("slow")
    await asyncio.wait_for(journal.written(journal.accepted(slow, "m1")), 5)
    assert files.syncs == {**before, "loop": before["loop"] + 1}     # quiet, nothing slow seen yet: in the loop
    journal.finished(finished(slow))
    await asyncio.wait_for(journal.written(files.appended), 5)
    files.datasync = lambda fd: None
    before = dict(files.syncs)
    assert len(journal.in_flight) == 0
    await asyncio.wait_for(journal.written(journal.accepted(a_call("after"), "m1")), 5)
    assert files.syncs == {**before, "thread": before["thread"] + 1}, "a sync of 10 ms was seen: not in the loop"
    journal.close()


async def test_without_fsync_an_acceptance_is_safe_at_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "gw")
    await journal.open()
    assert journal.pending(journal.accepted(a_call("unsynced"), "m1")) is None
    journal.close()


async def test_with_fsync_a_usage_event_is_synced_soon_or_with_the_next_acceptance(tmp_path: Path) -> None:
    """A finished call's record does not start a sync of its own that the next acceptance would queue behind:
    it is synced by a timer, or earlier by the next acceptance's sync, which covers it."""
    journal = Journal(tmp_path, "gw", fsync=True)
    await journal.open()
    first = a_call("first")
    await asyncio.wait_for(journal.written(journal.accepted(first, "m1")), 5)
    journal.finished(finished(first))
    await turn()                                               # written, its sync not begun
    event_record = journal.files.appended
    assert journal.files._written >= event_record and not journal.files._syncing    # noqa: SLF001
    syncing = journal.pending(journal.accepted(a_call("second"), "m1"))
    assert syncing is not None and journal.files._syncing      # noqa: SLF001 — the acceptance syncs at once
    await asyncio.wait_for(syncing, 5)
    assert journal.files._durable >= event_record              # noqa: SLF001 — and the event with it
    journal.finished(finished(a_call("third")))
    await asyncio.wait_for(journal.written(journal.files.appended), 5)     # alone: by the timer
    journal.close()


async def test_a_usage_event_is_written_at_once_so_a_kill_right_after_the_answer_finds_it_finished(
        tmp_path: Path) -> None:
    """The client may have the whole answer as soon as the call is finished: a process killed before the end of
    that loop turn leaves its usage event, published again by the next life, not an interrupted call."""
    journal = Journal(tmp_path, "gw")
    await journal.open()
    call = a_call("answered")
    journal.accepted(call, "m1")
    journal.finished(finished(call))
    die(journal)                                   # before the loop turns
    second = Journal(tmp_path, "gw", estimator=TokenEstimator())
    assert await second.open() == 1
    assert [(e.request_id, e.outcome) for e, _ in second.take_parked(10)] == [("answered", "ok")]
    second.close()
