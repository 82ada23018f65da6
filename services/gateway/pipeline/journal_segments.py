"""The journal's files: append-only segments under a locked directory, written in batches, deleted once unneeded.

Records appended during one turn of the event loop go out in one write(2); `write_now` and
`flush_now` write at once. With `fsync`, writes are followed by fdatasync (one at a time: what is
written meanwhile shares the next), at once for an acceptance and within SYNC_LATER_S for the rest,
and `written(n)` waits for it. The sync runs in a thread, so the loop serves other calls meanwhile;
when the journal is quiet (`quiet()`: the call syncing is the only one in flight) and this disk's
recent syncs were all quick, it runs in the loop instead, once the loop turn's other writes (the
call's reservation) are out: nothing else waits for the loop then, and the hand-off to a thread
and back cost more than the sync (docs/performance.md). Each record is counted against the
segment it sits in (`hold`) until the journal no longer needs it (`release`); a segment rolls
over at `segment_bytes` (the journal carries what it still needs into the new one) and is
deleted, oldest first, once nothing in it is needed and what made that so is safe.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from switchyard_gateway.services.gateway.pipeline.journal_records import segment_number, segments

log = structlog.get_logger()
# With fsync, what is not an acceptance (progress, usage events, acknowledgements) waits at most this long for its
# fdatasync, or rides along with the next acceptance's: a call's acceptance never queues behind the previous
# call's usage event.
SYNC_LATER_S = 0.005
INLINE_SYNC_MAX_S = 0.002       # a quiet journal syncs in the loop while its last RECENT_SYNCS syncs each took less
RECENT_SYNCS = 64


class JournalBusy(RuntimeError):
    """Another live process holds this instance's journal (two gateways with one instance name)."""


class Segments:
    """One journal directory's segment files; `carry` returns, at a roll-over, the records to write again."""

    def __init__(self, directory: Path, *, fsync: bool, segment_bytes: int,
                 carry: Callable[[], list[bytes]], quiet: Callable[[], bool] = lambda: False) -> None:
        self.directory, self.fsync, self.segment_bytes, self.carry = directory, fsync, segment_bytes, carry
        self.quiet = quiet
        self.datasync: Callable[[int], None] = os.fdatasync
        self.recent_sync_s: collections.deque[float] = collections.deque(maxlen=RECENT_SYNCS)
        self.syncs = {"loop": 0, "thread": 0}
        self.segment = 0
        self.live: dict[int, int] = {}                  # segment -> its records still needed
        self._emptied: dict[int, int] = {}              # segment -> the record after which nothing in it was needed
        self._fd = -1
        self._lock_fd: int | None = None
        self._size = 0
        self._buffer: list[bytes] = []
        self.appended = self._written = self._durable = 0       # records: appended, written, safe
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._flush_scheduled = self._syncing = self._rotate_pending = False
        self._urgent = 0                                # the last record to be synced at once (an acceptance)
        self._later: asyncio.TimerHandle | None = None   # the sync the others wait for
        self._loop: asyncio.AbstractEventLoop | None = None
        self.write_errors = 0

    async def open(self, lock_wait_s: float) -> list[Path]:
        """Lock the directory, begin a new segment; return the segments a previous life left, oldest first."""
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = await lock(self.directory / "lock", lock_wait_s)
        left = segments(self.directory)
        self.segment = segment_number(left[-1]) + 1 if left else 1
        self._begin()
        return left

    def close(self, *, remove: bool) -> None:
        """Write what is buffered, let go of the directory; `remove` its segments (nothing in them is needed)."""
        if self._fd < 0:
            return
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self.flush_now()
        os.close(self._fd)
        self._fd = -1
        if remove:
            for path in segments(self.directory):
                path.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, segment: int) -> Path:
        return self.directory / segment_name(segment)

    # -- what is needed ----------------------------------------------------------------------------

    def hold(self, segment: int) -> None:
        self.live[segment] += 1

    def release(self, segment: int) -> None:
        left = self.live[segment] = self.live[segment] - 1
        if left == 0:
            self._emptied[segment] = self.appended + 1      # once what comes next is safe, it may go

    # -- writing -----------------------------------------------------------------------------------

    def append(self, line: bytes) -> int:
        """Buffer a record (written at the end of this loop turn); return its number, for `written`."""
        self._buffer.append(line)
        self.appended += 1
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return self.appended

    async def written(self, number: int) -> None:
        """Wait until record `number` is written (with fsync: on disk)."""
        pending = self.pending(number)
        if pending is not None:
            await pending

    def pending(self, number: int) -> asyncio.Future[None] | None:
        """What to await until record `number` is written (with fsync: on disk); None if it already is."""
        if self._durable >= number:
            return None
        assert self._loop is not None
        future = self._loop.create_future()
        self._waiters.append((number, future))
        return future

    def flush_now(self) -> None:
        """Write (and with fsync, sync) everything appended, before returning."""
        if self._buffer and self._fd >= 0:
            self._write(b"".join(self._buffer))
            self._buffer.clear()
            self._written = self.appended
        if self.fsync and self._fd >= 0:
            os.fdatasync(self._fd)
        self._advance(self._written)

    def write_now(self, urgent: bool = False) -> None:
        """One write(2) for every record appended since the last, now; with fsync, then fdatasync
        (`pending` tells when it is done): at once if `urgent`, else within SYNC_LATER_S."""
        if self._buffer and self._fd >= 0:
            self._write(b"".join(self._buffer))
            self._buffer.clear()
            self._written = self.appended
        if urgent:
            self._urgent = self._written
        if not self.fsync:
            self._advance(self._written)
        else:
            self._sync_due()

    def _sync_due(self) -> None:
        """Begin the sync that is due: now for an acceptance, else on the timer (unless one is running)."""
        if self._syncing or self._written <= self._durable:
            return
        if self._urgent > self._durable:
            self._sync()
        elif self._later is None and self._loop is not None:
            self._later = self._loop.call_later(SYNC_LATER_S, self._sync_later)

    def _sync_later(self) -> None:
        self._later = None
        if not self._syncing and self._written > self._durable:
            self._sync()

    def _flush(self) -> None:
        """What the loop turn appended, written at its end (see `write_now`)."""
        self._flush_scheduled = False
        self.write_now()
        if self._size >= self.segment_bytes:
            self._rotate()

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
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self._syncing = True
        upto, loop = self._written, self._loop
        if self.quiet() and max(self.recent_sync_s, default=0.0) < INLINE_SYNC_MAX_S:
            loop.call_soon(loop.call_soon, self._sync_in_loop, upto)     # after this turn's writes
            return
        self.syncs["thread"] += 1
        done = loop.run_in_executor(None, self._datasync, self._fd)
        done.add_done_callback(lambda future: self._synced(upto, future.exception()))

    def _sync_in_loop(self, upto: int) -> None:
        self.syncs["loop"] += 1
        error = None
        if self._fd >= 0:                      # closed meanwhile: `close` synced it
            try:
                self._datasync(self._fd)
            except OSError as exc:
                error = exc
        self._synced(upto, error)

    def _datasync(self, fd: int) -> None:
        started = time.perf_counter()
        try:
            self.datasync(fd)
        finally:
            self.recent_sync_s.append(time.perf_counter() - started)

    def _synced(self, upto: int, error: BaseException | None) -> None:
        self._syncing = False
        if error is not None:
            log.error("journal.sync_failed", error=str(error))
        self._advance(upto)
        if self._rotate_pending:
            self._rotate()
        else:
            self._sync_due()

    def _advance(self, upto: int) -> None:
        """Records up to `upto` are safe: wake who waits for them, delete the segments that are done."""
        self._durable = max(self._durable, upto)
        if self._waiters:
            waiting = []
            for number, future in self._waiters:
                if number > self._durable:
                    waiting.append((number, future))
                elif not future.done():
                    future.set_result(None)
            self._waiters = waiting
        if not self._emptied:
            return
        for segment in sorted(self.live):
            if segment == self.segment or self.live[segment] or self._emptied.get(segment, 0) > self._durable:
                break
            self.path(segment).unlink(missing_ok=True)
            del self.live[segment]
            self._emptied.pop(segment, None)

    def _begin(self) -> None:
        self._fd = os.open(self.path(self.segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self.live.setdefault(self.segment, 0)
        if self.fsync:
            _fsync_directory(self.directory)

    def _rotate(self) -> None:
        """Begin a new segment and write into it at once what the journal still needs from older ones."""
        if self._syncing:
            self._rotate_pending = True
            return
        self._rotate_pending = False
        self.flush_now()
        os.close(self._fd)
        self.segment += 1
        self._begin()
        carried = self.carry()
        if carried:
            self._write(b"".join(carried))
        self.flush_now()
        log.info("journal.rotated", segment=self.segment, carried=len(carried))


def segment_name(number: int) -> str:
    return f"seg-{number:09d}.jsonl"


def try_lock(path: Path) -> int | None:
    """An exclusive flock on path (its fd), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


async def lock(path: Path, wait_s: float) -> int:
    """The flock on a journal directory, waiting up to `wait_s` for a predecessor still draining."""
    deadline = time.monotonic() + wait_s
    while (fd := try_lock(path)) is None:
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
