"""Publish usage events without making the client wait, and never drop one.

`record()` only appends to an in-memory queue. A background loop lingers a few
milliseconds, then publishes what has gathered as one JetStream message per
tenant (a JSON array of events on `usage.recorded.v1.<tenant>`) and awaits the
acks in the background; whatever is not acknowledged in time is appended to a
local spool file, replayed when NATS answers again. A batch resent after a lost
ack may be stored twice in the stream; the log keeps each event id once.
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

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_event, encode, encode_batch
from switchyard_gateway.contracts.events import Event, subject_of

log = structlog.get_logger()

ACK_TIMEOUT_S = 5.0
MAX_BATCH = 256          # events in one JetStream message
LINGER_S = 0.05          # wait this long for a batch to fill: at most ~20 messages/s per tenant and gateway,
                         # and no publishing work between the calls of a quiet gateway
MAX_IN_FLIGHT = 32       # batches awaiting their ack


class UsagePublisher:
    def __init__(self, nc: NATS, spool_dir: Path) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=ACK_TIMEOUT_S, publish_async_max_pending=4096)
        self.spool = Spool(spool_dir)
        self.queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._confirmations: set[asyncio.Task[None]] = set()
        self.published = 0
        self.spooled = 0

    def record(self, event: Event) -> None:
        """Queue an event for publishing; returns at once."""
        self.queue.append(event)
        if not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self.queue) + self.spool.count + sum(1 for _ in self._confirmations)

    async def run(self) -> None:
        """Publish queued events until cancelled; replay the spool whenever NATS is connected."""
        replay = asyncio.ensure_future(self._replay_loop())
        try:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                if len(self.queue) < MAX_BATCH:
                    await asyncio.sleep(LINGER_S)
                await self._publish(self._take(MAX_BATCH * 4))
        finally:
            replay.cancel()

    def _take(self, limit: int) -> list[Event]:
        return [self.queue.popleft() for _ in range(min(len(self.queue), limit))]

    async def _publish(self, events: list[Event]) -> None:
        """Publish events as one message per tenant and batch; acks are awaited in the background."""
        for batch in _batches(events):
            await self._in_flight.acquire()
            future = await self._send(batch)
            if future is None:
                self._in_flight.release()
                self._spool(batch)
                continue
            task = asyncio.ensure_future(self._confirm(batch, future))
            self._confirmations.add(task)
            task.add_done_callback(self._confirmations.discard)

    async def _send(self, batch: list[Event]) -> asyncio.Future | None:
        if not self.nc.is_connected:
            return None
        try:
            return await self.js.publish_async(
                subject_of(batch[0]), encode_batch(batch), wait_stall=ACK_TIMEOUT_S,
                headers={subjects.MSG_ID_HEADER: f"{batch[0].event_id}+{len(batch)}"},
            )
        except Exception:  # noqa: BLE001 — NATS trouble: spool it
            return None

    async def _confirm(self, batch: list[Event], future: asyncio.Future) -> None:
        try:
            await asyncio.wait_for(future, ACK_TIMEOUT_S)
            self.published += len(batch)
        except Exception:  # noqa: BLE001 — no ack (timeout, NATS down, stream error): keep it on disk
            self._spool(batch)
        finally:
            self._in_flight.release()

    def _spool(self, batch: list[Event]) -> None:
        self.spool.append(batch)
        self.spooled += len(batch)
        log.warning("usage.spooled", events=len(batch), spool=self.spool.count)

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.spool.count and self.nc.is_connected:
                for path, events in self.spool.take():
                    log.info("usage.spool_replay", events=len(events), file=path.name)
                    await self._publish(events)
                    path.unlink()   # only now: a crash before this replays the file again

    async def drain(self, timeout_s: float = 2.0) -> None:
        """On shutdown: publish what is queued and wait for the acks; spool whatever is left."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.queue:
                    await self._publish(self._take(MAX_BATCH * 4))
                if self._confirmations:
                    await asyncio.gather(*self._confirmations, return_exceptions=True)
        if self.queue:
            self._spool(self._take(len(self.queue)))


def _batches(events: list[Event]) -> list[list[Event]]:
    """Group events by subject (type and tenant), at most MAX_BATCH to a message, order kept."""
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(subject_of(event), []).append(event)
    return [group[i:i + MAX_BATCH] for group in groups.values() for i in range(0, len(group), MAX_BATCH)]


class OutcomeBatcher:
    """Call outcomes for the router: a live signal on core NATS, one message per gateway every few ms."""

    def __init__(self, nc: NATS, instance: str) -> None:
        self.nc = nc
        self.subject = f"{subjects.CALL_ATTEMPTED}.{subjects.subject_token(instance)}"
        self.pending: list[Event] = []
        self._scheduled = False

    def record(self, event: Event) -> None:
        self.pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(LINGER_S, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self.pending = self.pending, []
        if batch and self.nc.is_connected:
            asyncio.ensure_future(self._publish(encode_batch(batch)))

    async def _publish(self, payload: bytes) -> None:
        with contextlib.suppress(Exception):   # a health signal, not accounting: never fail for it
            await self.nc.publish(self.subject, payload)


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
