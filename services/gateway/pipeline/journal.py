"""The gateway's journal: every accepted call on local disk, from its acceptance until JetStream holds its usage event.

A call is written when it is accepted (before its quota is reserved), every second or so
while it runs long (tokens so far), and when it finishes (its usage event, before that is
queued for NATS); JetStream's acknowledgements are written too. Records go to an append-only
segment file in batches: everything appended during one turn of the event loop is one
write(2), which a crash of the process cannot lose — except an acceptance and a usage event,
which are written at once (with whatever is waiting): no quota is held and no upstream called
for a call the journal does not know, and no call whose client has its answer is taken for
interrupted. With `fsync` every batch is also synced (fdatasync, in a
thread), for crashes of the machine: a call's acceptance syncs while its quota is reserved,
and the call goes upstream only once it is on disk.

Segments roll over at `segment_bytes`; the calls still in flight are carried into the new
one, and a segment is deleted once nothing in it is still needed (each of its events
acknowledged; with fsync, once what made that so is on disk), oldest first.

On start the gateway's next life reads what its last one left (`journal_records.Left`):
each event never acknowledged is published again under its own event id, and each call
still in flight becomes an `interrupted` usage event under the event id it was accepted
with — so JetStream's duplicate window and the log's unique event id keep every call at
one event. Each gateway instance has its own directory under the spool directory; a
gateway also takes over the journal of a sibling instance that is not running (its lock
is free), so a replica that is gone for good leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from switchyard_gateway.contracts.codec import decode_event
from switchyard_gateway.contracts.codec import encode as encode_event
from switchyard_gateway.contracts.events import Event, UsageRecorded
from switchyard_gateway.services.gateway.pipeline.journal_records import (
    Accepted, Finished, Left, Progress, Refused, encode, event_id_of, records, segments,
)
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.pipeline.journal_segments import JournalBusy, Segments, try_lock
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome

__all__ = ["Journal", "JournalBusy", "directory_name"]

log = structlog.get_logger()

SEGMENT_BYTES = 16 * 1024 * 1024
LOCK_WAIT_S = 15.0             # a predecessor still draining gets this long to let go of the journal
PROGRESS_AFTER_S = 1.0         # calls running longer than this (or streaming output) get their progress written


class _Open:
    """A call in flight: where its acceptance is written, and what was last written about its progress."""

    __slots__ = ("call", "accepted", "segment", "outcome", "progress", "prompt_tokens")

    def __init__(self, call: Call, accepted: Accepted, segment: int) -> None:
        self.call, self.accepted, self.segment = call, accepted, segment
        self.outcome: Outcome | None = None
        self.progress: Progress | None = None
        self.prompt_tokens: int | None = None


class Journal:
    """One gateway instance's journal: `open` it, note each call, `close` it on the way out."""

    def __init__(self, root: Path, instance: str, *, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES,
                 lock_wait_s: float = LOCK_WAIT_S, estimator: Any = None) -> None:
        self.root = root
        self.directory = root / directory_name(instance)
        self.fsync, self.lock_wait_s = fsync, lock_wait_s
        self.estimator = estimator                      # counts the prompt of a long call (quotas.tokens)
        self.files = Segments(self.directory, fsync=fsync, segment_bytes=segment_bytes, carry=self._carry,
                              quiet=lambda: len(self.in_flight) <= 1)
        self.in_flight: dict[uuid.UUID, _Open] = {}
        self.unacknowledged: dict[uuid.UUID, int] = {}  # event id -> segment holding its usage event
        self.parked: dict[int, set[uuid.UUID]] = {}     # segment -> events to read back and publish again

    # -- life ------------------------------------------------------------------------------------

    async def open(self) -> int:
        """Lock this instance's journal, take over what its last life left, begin a new segment; return the
        number of usage events waiting to be published (they are parked: `take_parked` reads them back)."""
        left = await self.files.open(self.lock_wait_s)
        waiting = self._take_over(left) + self._take_over_spool()
        if waiting:
            log.warning("journal.recovered", events=waiting, directory=str(self.directory))
        return waiting

    def close(self) -> None:
        """Write what is buffered and let go; a journal with nothing left to do is removed."""
        self.files.close(remove=not self.in_flight and not self.unacknowledged)

    def adopt_orphans(self) -> int:
        """Take over the journal of every sibling instance not running now (its lock is free); return the number
        of usage events it left to publish."""
        taken = 0
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.directory):
            if not segments(directory):
                continue
            fd = try_lock(directory / "lock")
            if fd is None:
                continue
            try:
                found = self._take_over(segments(directory))
            finally:
                os.close(fd)
            if found:
                log.warning("journal.adopted", events=found, directory=str(directory))
            taken += found
        return taken

    # -- the calls -------------------------------------------------------------------------------

    def accepted(self, call: Call, model: str, prompt_tokens: int | None = None) -> int:
        """Note an accepted call, written at once (with fsync, its sync begun); return the number `pending` takes.
        `prompt_tokens` is what a call cut before its first progress record is charged: the prompt as its
        reservation counts it (an image as SWITCHYARD_IMAGE_TOKENS, not its base64); without it (no limit counts
        the call), a token per four bytes of the body."""
        record = Accepted(call.event_id, call.request_id, time.time(), call.tenant_id, call.key_id, model,
                          call.request.model or "", call.api, call.request.stream,
                          prompt_tokens or max(1, len(call.body) // 4))
        self.in_flight[call.event_id] = _Open(call, record, self.files.segment)
        self.files.hold(self.files.segment)
        number = self.files.append(encode(record) + b"\n")
        self.files.write_now(urgent=True)
        return number

    async def written(self, number: int) -> None:
        """Wait until record `number` is safe (at once, unless the journal syncs to disk)."""
        await self.files.written(number)

    def pending(self, number: int) -> asyncio.Future[None] | None:
        """What to await until record `number` is safe; None if it is (always, unless the journal syncs)."""
        return self.files.pending(number)

    def serving(self, call: Call, outcome: Outcome) -> None:
        """The call's Outcome, read for progress while it runs long."""
        entry = self.in_flight.get(call.event_id)
        if entry is not None:
            entry.outcome = outcome

    def refused(self, call: Call) -> None:
        """An accepted call did not go ahead after all (over a quota): it has no usage event."""
        if self._close_call(call.event_id):
            self.files.append(encode(Refused(call.event_id)) + b"\n")

    def finished(self, event: UsageRecorded) -> bytes:
        """Note a call's usage event, written at once: its client may have the whole answer already, and a
        process killed before the end of the loop turn must not leave the call looking interrupted. Return the
        event encoded, as it is to be published."""
        raw = encode_event(event)
        self._close_call(event.event_id)
        self._note_finished(event.event_id, raw, park=False)
        self.files.write_now()
        return raw

    def acknowledged(self, event_ids: list[uuid.UUID]) -> None:
        """JetStream has these events: their records are no longer needed."""
        for event_id in event_ids:
            segment = self.unacknowledged.pop(event_id, None)
            if segment is not None:
                self.files.release(segment)
        self.files.append(b'["k",' + encode(event_ids) + b"]\n")

    def park(self, event_ids: list[uuid.UUID]) -> None:
        """JetStream did not take these events: leave them on disk until `take_parked` reads them back."""
        for event_id in event_ids:
            segment = self.unacknowledged.get(event_id)
            if segment is not None:
                self.parked.setdefault(segment, set()).add(event_id)

    @property
    def parked_count(self) -> int:
        return sum(len(ids) for ids in self.parked.values())

    def take_parked(self, limit: int) -> list[tuple[Event, bytes]]:
        """Up to `limit` parked events, oldest first, read back from their segments (event, as encoded)."""
        self.files.flush_now()
        taken: list[tuple[Event, bytes]] = []
        for segment in sorted(self.parked):
            wanted = self.parked[segment]
            for record in records(self.files.path(segment)):
                if len(taken) >= limit:
                    return taken
                if isinstance(record, Finished) and (event_id := event_id_of(record.event)) in wanted:
                    wanted.discard(event_id)
                    raw = bytes(record.event)
                    taken.append((decode_event(raw), raw))
            for event_id in wanted:             # not found where it was written: nothing left to publish
                log.error("journal.event_missing", event_id=str(event_id), segment=segment)
                if self.unacknowledged.pop(event_id, None) is not None:
                    self.files.release(segment)
            del self.parked[segment]
        return taken

    def note_progress(self, now: float) -> None:
        """Write what each call running longer than PROGRESS_AFTER_S, or streaming output already, has done since
        it was last written: a stream cut by a crash in its first second is billed what it had sent by the last
        tick, as a longer one is."""
        for entry in self.in_flight.values():
            outcome = entry.outcome
            if outcome is None:
                continue
            tap = outcome.stream_tap
            output = outcome.output_tokens or (tap.content_events if tap is not None else 0)
            if not output and now - entry.accepted.at < PROGRESS_AFTER_S:
                continue
            if entry.prompt_tokens is None:
                entry.prompt_tokens = self._count_prompt(entry.call)
            endpoint = outcome.endpoint
            progress = Progress(entry.call.event_id, now, outcome.status, outcome.input_tokens or entry.prompt_tokens,
                                output, outcome.model, endpoint.endpoint_id if endpoint else "",
                                endpoint.provider_id if endpoint else "", outcome.upstream_model, outcome.attempts)
            last = entry.progress
            if last is None or msgspec.structs.astuple(last)[2:] != msgspec.structs.astuple(progress)[2:]:
                entry.progress = progress
                self.files.append(encode(progress) + b"\n")

    # -- bookkeeping -----------------------------------------------------------------------------

    def _count_prompt(self, call: Call) -> int:
        """The prompt's tokens as the reservation counts them (the call's Ask counts once); a call made without
        an Ask is read again here."""
        ask = call.ask
        if ask is None and self.estimator is not None:
            try:
                request = read_request(call.api, call.body)
                ask = Door(call.door.path, request, call.body).ask(1 << 30, self.estimator)
            except GatewayError:
                ask = None
        return ask.counted_tokens() if ask is not None else max(1, len(call.body) // 4)

    def _close_call(self, event_id: uuid.UUID) -> bool:
        entry = self.in_flight.pop(event_id, None)
        if entry is None:
            return False
        self.files.release(entry.segment)
        return True

    def _note_finished(self, event_id: uuid.UUID, raw: bytes, *, park: bool) -> None:
        segment = self.files.segment
        self.unacknowledged[event_id] = segment
        self.files.hold(segment)
        if park:
            self.parked.setdefault(segment, set()).add(event_id)
        self.files.append(b'["f",' + raw + b"]\n")

    def _carry(self) -> list[bytes]:
        """At a roll-over: the calls still in flight move to the new segment, so that the old ones can go."""
        carried = []
        for entry in self.in_flight.values():
            self.files.release(entry.segment)
            entry.segment = self.files.segment
            self.files.hold(entry.segment)
            carried.append(encode(entry.accepted) + b"\n")
            if entry.progress is not None:
                carried.append(encode(entry.progress) + b"\n")
        return carried

    def _take_over(self, paths: list[Path]) -> int:
        """Make what a journal's segments left undone ours: its calls in flight as `interrupted` usage events,
        its unacknowledged events as written; both parked in our segment, then its segments deleted."""
        left = Left.read(paths)
        waiting = 0
        for event in left.interrupted():
            self._note_finished(event.event_id, encode_event(event), park=True)
            waiting += 1
        wanted = set(left.unacknowledged)
        for path in paths:
            for record in records(path):
                if isinstance(record, Finished) and (event_id := event_id_of(record.event)) in wanted:
                    wanted.discard(event_id)
                    self._note_finished(event_id, bytes(record.event), park=True)
                    waiting += 1
        self.files.flush_now()              # ours, and safe, before theirs go
        for path in paths:
            path.unlink(missing_ok=True)
        return waiting

    def _take_over_spool(self) -> int:
        """Usage events an earlier version spooled to files in the spool directory."""
        waiting = 0
        for path in sorted([*self.root.glob("usage-*.jsonl"), *self.root.glob("usage-*.replaying")]):
            for line in path.read_bytes().splitlines():
                try:
                    self._note_finished(event_id_of(line), line, park=True)
                    waiting += 1
                except msgspec.MsgspecError:
                    log.error("journal.bad_spool_line", file=path.name)
            self.files.flush_now()
            path.unlink()
        return waiting


def directory_name(instance: str) -> str:
    """An instance name as a directory name: letters, digits, '.', '_' and '-' kept, the rest '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance).lstrip(".") or "gateway"
