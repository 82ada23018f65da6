"""Publish usage events without making the client wait, and never drop one.

`record()` only appends to an in-memory queue. A background loop publishes
batches to JetStream (the event id is the message id, so a resend is
de-duplicated) and waits for the acks; whatever is not acknowledged in time is
appended to a local spool file, which is replayed when NATS answers again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from pathlib import Path

import structlog
from nats.aio.client import Client as NATS

from libs.contracts import subjects
from libs.contracts.codec import decode_event, encode
from libs.contracts.events import Event, subject_of

log = structlog.get_logger()

ACK_TIMEOUT_S = 5.0
MAX_BATCH = 512


class UsagePublisher:
    def __init__(self, nc: NATS, spool_dir: Path) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=ACK_TIMEOUT_S, publish_async_max_pending=8192)
        self.spool = Spool(spool_dir)
        self.queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self.published = 0
        self.spooled = 0
        self._stopping = False

    def record(self, event: Event) -> None:
        """Queue an event for publishing; returns at once."""
        self.queue.append(event)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.queue) + self.spool.count

    async def run(self) -> None:
        """Publish queued events until cancelled; replay the spool whenever NATS is connected."""
        replay = asyncio.ensure_future(self._replay_loop())
        try:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                batch = [self.queue.popleft() for _ in range(min(len(self.queue), MAX_BATCH))]
                await self._publish(batch)
        finally:
            replay.cancel()

    async def _publish(self, batch: list[Event]) -> None:
        failed = await self._send(batch)
        if failed:
            self.spool.append(failed)
            self.spooled += len(failed)
            log.warning("usage.spooled", events=len(failed), spool=self.spool.count)

    async def _send(self, batch: list[Event]) -> list[Event]:
        """Publish a batch; return the events whose ack did not come back."""
        if not self.nc.is_connected:
            return batch
        futures = []
        failed: list[Event] = []
        for event in batch:
            try:
                fut = await self.js.publish_async(
                    subject_of(event), encode(event), wait_stall=ACK_TIMEOUT_S,
                    headers={subjects.MSG_ID_HEADER: str(event.event_id)},
                )
            except Exception:  # noqa: BLE001 — NATS trouble: spool it
                failed.append(event)
                continue
            futures.append((event, fut))
        if futures:
            await asyncio.wait([f for _, f in futures], timeout=ACK_TIMEOUT_S)
        for event, fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.published += 1
            else:
                if not fut.done():
                    fut.cancel()
                failed.append(event)
        return failed

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.spool.count and self.nc.is_connected:
                for path, events in self.spool.take():
                    log.info("usage.spool_replay", events=len(events), file=path.name)
                    for start in range(0, len(events), MAX_BATCH):
                        await self._publish(events[start:start + MAX_BATCH])
                    path.unlink()   # only now: a crash before this replays the file again

    async def drain(self, timeout_s: float = 10.0) -> None:
        """On shutdown: publish what is queued, spool whatever cannot be published."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.queue:
                    batch = [self.queue.popleft() for _ in range(min(len(self.queue), MAX_BATCH))]
                    await self._publish(batch)
        if self.queue:
            self.spool.append(list(self.queue))
            self.queue.clear()


class Spool:
    """An append-only JSON-lines file of events waiting for NATS; fsynced on every append."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"usage-{os.getpid()}-{time.time_ns()}.jsonl"
        self.directory = directory
        self.count = sum(self._count(p) for p in self._files())

    def _files(self) -> list[Path]:
        return sorted([*self.directory.glob("usage-*.jsonl"), *self.directory.glob("usage-*.replaying")])

    @staticmethod
    def _count(path: Path) -> int:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())

    def append(self, events: list[Event]) -> None:
        with self.path.open("ab") as f:
            f.write(b"".join(encode(e) + b"\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
        self.count += len(events)

    def take(self) -> list[tuple[Path, list[Event]]]:
        """Every spool file (including those an earlier process left) renamed aside, with its events.

        The caller deletes each file once its events are published or re-spooled.
        """
        taken: list[tuple[Path, list[Event]]] = []
        for path in self._files():
            aside = path.with_suffix(".replaying")
            if path != aside:
                path.rename(aside)
            events: list[Event] = []
            with aside.open("rb") as f:
                for line in f:
                    if line.strip():
                        try:
                            events.append(decode_event(line))
                        except Exception:  # noqa: BLE001 — a torn last line after a crash
                            log.error("usage.spool_bad_line", file=str(aside))
            taken.append((aside, events))
        self.count = 0
        return taken
