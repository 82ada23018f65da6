"""The gateway's journal: every accepted call on local disk, from its acceptance until JetStream holds its usage event.

A call is written when it is accepted (before its quota is reserved), every second or so
while it runs long (tokens so far), and when it finishes (its usage event, before that is
queued for NATS); JetStream's acknowledgements are written too. Records go to an append-only
segment file in batches: everything appended during one turn of the event loop is one
write(2), which a crash of the process cannot lose — except an acceptance, which is written
at once (with whatever is waiting), so that no quota is held and no upstream called for a
call the journal does not know. With `fsync` every batch also waits for fdatasync, for
crashes of the machine, and a call waits for its acceptance to be on disk before it goes on.

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
import fcntl
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
    Accepted, Finished, Left, Progress, Refused, encode, event_id_of, records, segment_number, segments,
)

if TYPE_CHECKING:
    from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome

log = structlog.get_logger()

SEGMENT_BYTES = 16 * 1024 * 1024
LOCK_WAIT_S = 15.0             # a predecessor still draining gets this long to let go of the journal
PROGRESS_AFTER_S = 1.0         # calls running longer than this get their progress written


class JournalBusy(RuntimeError):
    """Another live process holds this instance's journal (two gateways with one instance name)."""


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
        self.fsync, self.segment_bytes, self.lock_wait_s = fsync, segment_bytes, lock_wait_s
        self.estimator = estimator                      # counts the prompt of a long call (quotas.tokens)
        self.in_flight: dict[uuid.UUID, _Open] = {}
        self.unacknowledged: dict[uuid.UUID, int] = {}  # event id -> segment holding its usage event
        self.parked: dict[int, set[uuid.UUID]] = {}     # segment -> events to read back and publish again
        self.live: dict[int, int] = {}                  # segment -> its records still needed
        self._emptied: dict[int, int] = {}              # segment -> the record after which it was no longer needed
        self.segment = 0
        self._fd = -1
        self._lock_fd: int | None = None
        self._size = 0
        self._buffer: list[bytes] = []
        self._appended = self._written = self._durable = 0      # records: appended, written, safe
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flush_scheduled = self._syncing = self._rotate_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.write_errors = 0

    # -- life ------------------------------------------------------------------------------------

    async def open(self) -> int:
        """Lock this instance's journal, take over what its last life left, begin a new segment; return the
        number of usage events waiting to be published (they are parked: `take_parked` reads them back)."""
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = await _lock(self.directory / "lock", self.lock_wait_s)
        left = segments(self.directory)
        self.segment = segment_number(left[-1]) + 1 if left else 1
        self._begin_segment()
        waiting = self._take_over(left) + self._take_over_spool()
        if waiting:
            log.warning("journal.recovered", events=waiting, directory=str(self.directory))
        return waiting

    def close(self) -> None:
        """Write what is buffered and let go; a journal with nothing left to do is removed."""
        if self._fd < 0:
            return
        self._flush_now()
        os.close(self._fd)
        self._fd = -1
        if not self.in_flight and not self.unacknowledged:
            for path in segments(self.directory):
                path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def adopt_orphans(self) -> int:
        """Take over the journal of every sibling instance not running now (its lock is free); return the number
        of usage events it left to publish."""
        taken = 0
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.directory):
            if not segments(directory):
                continue
            fd = _try_lock(directory / "lock")
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

    def accepted(self, call: Call, model: str) -> int:
        """Note an accepted call; return the number its record must reach `written` under."""
        record = Accepted(call.event_id, call.request_id, time.time(), call.tenant_id, call.key_id, model,
                          call.request.model or "", call.api, call.request.stream, max(1, len(call.body) // 4))
        self.in_flight[call.event_id] = _Open(call, record, self.segment)
        self.live[self.segment] += 1
        number = self._append(encode(record) + b"\n")
        if not self.fsync:
            self._flush_now()
        return number

    def serving(self, call: Call, outcome: Outcome) -> None:
        """The call's Outcome, read for progress while it runs long."""
        entry = self.in_flight.get(call.event_id)
        if entry is not None:
            entry.outcome = outcome

    def refused(self, call: Call) -> None:
        """An accepted call did not go ahead after all (over a quota): it has no usage event."""
        if self._close_call(call.event_id):
            self._append(encode(Refused(call.event_id)) + b"\n")

    def finished(self, event: UsageRecorded) -> bytes:
        """Note a call's usage event; return it encoded, as it is to be published."""
        raw = encode_event(event)
        self._close_call(event.event_id)
        self._note_finished(event.event_id, raw, park=False)
        return raw

    def acknowledged(self, event_ids: list[uuid.UUID]) -> None:
        """JetStream has these events: their records are no longer needed."""
        for event_id in event_ids:
            segment = self.unacknowledged.pop(event_id, None)
            if segment is not None:
                self._release(segment)
        self._append(b'["k",' + encode(event_ids) + b"]\n")

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
        self._flush_now()
        taken: list[tuple[Event, bytes]] = []
        for segment in sorted(self.parked):
            wanted = self.parked[segment]
            for record in records(self.directory / segment_name(segment)):
                if len(taken) >= limit:
                    return taken
                if isinstance(record, Finished) and (event_id := event_id_of(record.event)) in wanted:
                    wanted.discard(event_id)
                    raw = bytes(record.event)
                    taken.append((decode_event(raw), raw))
            for event_id in wanted:             # not found where it was written: nothing left to publish
                log.error("journal.event_missing", event_id=str(event_id), segment=segment)
                if self.unacknowledged.pop(event_id, None) is not None:
                    self._release(segment)
            del self.parked[segment]
        return taken

    async def written(self, number: int) -> None:
        """Wait until record `number` is written (with fsync: on disk)."""
        if self._durable >= number:
            return
        assert self._loop is not None
        future = self._loop.create_future()
        self._waiters.append((number, future))
        await future

    def note_progress(self, now: float) -> None:
        """Write what each call running longer than PROGRESS_AFTER_S has done since it was last written."""
        for entry in self.in_flight.values():
            outcome = entry.outcome
            if outcome is None or now - entry.accepted.at < PROGRESS_AFTER_S:
                continue
            if entry.prompt_tokens is None:
                entry.prompt_tokens = self._count_prompt(entry.call.body)
            endpoint = outcome.endpoint
            tap = outcome.stream_tap
            progress = Progress(entry.call.event_id, now, outcome.status, outcome.input_tokens or entry.prompt_tokens,
                                outcome.output_tokens or (tap.content_events if tap is not None else 0),
                                outcome.model, endpoint.endpoint_id if endpoint else "",
                                endpoint.provider_id if endpoint else "", outcome.upstream_model, outcome.attempts)
            last = entry.progress
            if last is None or msgspec.structs.astuple(last)[2:] != msgspec.structs.astuple(progress)[2:]:
                entry.progress = progress
                self._append(encode(progress) + b"\n")

    # -- records and segments --------------------------------------------------------------------

    def _count_prompt(self, body: bytes) -> int:
        if self.estimator is None:
            return max(1, len(body) // 4)
        return self.estimator.estimate(body, output=False, default_max_tokens=None)[0]

    def _close_call(self, event_id: uuid.UUID) -> bool:
        entry = self.in_flight.pop(event_id, None)
        if entry is None:
            return False
        self._release(entry.segment)
        return True

    def _note_finished(self, event_id: uuid.UUID, raw: bytes, *, park: bool) -> None:
        self.unacknowledged[event_id] = self.segment
        self.live[self.segment] += 1
        if park:
            self.parked.setdefault(self.segment, set()).add(event_id)
        self._append(b'["f",' + raw + b"]\n")

    def _release(self, segment: int) -> None:
        left = self.live[segment] = self.live[segment] - 1
        if left == 0:
            self._emptied[segment] = self._appended + 1     # once what comes next is safe, it may go

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
        self._flush_now()                   # ours, and safe, before theirs go
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
            self._flush_now()
            path.unlink()
        return waiting

    def _begin_segment(self) -> None:
        path = self.directory / segment_name(self.segment)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self.live.setdefault(self.segment, 0)
        if self.fsync:
            _fsync_directory(self.directory)

    def _append(self, line: bytes) -> int:
        self._buffer.append(line)
        self._appended += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return self._appended

    def _flush(self) -> None:
        """One write(2) for every record appended since the last; with fsync, then fdatasync in a thread."""
        self._flush_scheduled = False
        if self._buffer and self._fd >= 0:
            self._write(b"".join(self._buffer))
            self._buffer.clear()
            self._written = self._appended
        if not self.fsync:
            self._advance(self._written)
        elif not self._syncing and self._written > self._durable:
            self._sync()
        if self._size >= self.segment_bytes:
            self._rotate()

    def _flush_now(self) -> None:
        """Write (and with fsync, sync) everything appended, before returning."""
        if self._buffer and self._fd >= 0:
            self._write(b"".join(self._buffer))
            self._buffer.clear()
            self._written = self._appended
        if self.fsync and self._fd >= 0:
            os.fdatasync(self._fd)
        self._advance(self._written)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:            # disk full: the events still go to NATS, but a crash now would lose them
            self.write_errors += 1
            log.error("journal.write_failed", error=str(exc), directory=str(self.directory))
        self._size += len(data)

    def _sync(self) -> None:
        assert self._loop is not None
        self._syncing = True
        upto = self._written
        done = self._loop.run_in_executor(None, os.fdatasync, self._fd)
        done.add_done_callback(lambda future: self._synced(upto, future))

    def _synced(self, upto: int, future: asyncio.Future[None]) -> None:
        self._syncing = False
        if future.exception() is not None:
            log.error("journal.sync_failed", error=str(future.exception()))
        self._advance(upto)
        if self._rotate_pending:
            self._rotate()
        elif self._written > upto:
            self._sync()

    def _advance(self, upto: int) -> None:
        """Records up to `upto` are safe: wake who waits for them, delete the segments that are done."""
        self._durable = max(self._durable, upto)
        if self._waiters:
            waiting = []
            for number, future in self._waiters:
                if number <= self._durable:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((number, future))
            self._waiters = waiting
        if not self._emptied:
            return
        for segment in sorted(self.live):
            if segment == self.segment or self.live[segment] or self._emptied.get(segment, 0) > self._durable:
                break
            (self.directory / segment_name(segment)).unlink(missing_ok=True)
            del self.live[segment]
            self._emptied.pop(segment, None)

    def _rotate(self) -> None:
        """Begin a new segment and carry the calls in flight into it (written at once), so the old ones can go."""
        if self._syncing:
            self._rotate_pending = True
            return
        self._rotate_pending = False
        self._flush_now()
        os.close(self._fd)
        self.segment += 1
        self._begin_segment()
        carried = []
        for entry in self.in_flight.values():
            self._release(entry.segment)
            entry.segment = self.segment
            self.live[self.segment] += 1
            carried.append(encode(entry.accepted) + b"\n")
            if entry.progress is not None:
                carried.append(encode(entry.progress) + b"\n")
        if carried:
            self._write(b"".join(carried))
        self._flush_now()
        log.info("journal.rotated", segment=self.segment, carried=len(self.in_flight))


def directory_name(instance: str) -> str:
    """An instance name as a directory name: letters, digits, '.', '_' and '-' kept, the rest '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", instance).lstrip(".") or "gateway"


def segment_name(number: int) -> str:
    return f"seg-{number:09d}.jsonl"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


async def _lock(path: Path, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while (fd := _try_lock(path)) is None:
        if time.monotonic() > deadline:
            raise JournalBusy(f"the journal {path.parent} is held by another process (two gateways with the same "
                              f"SWITCHYARD_INSTANCE?)")
        await asyncio.sleep(0.1)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
