"""Publish usage events without making the client wait, and never lose one: each call is in the journal first.

The proxy tells the publisher when a call is accepted, refused after all, and
finished; each is written to the gateway's journal (`journal.py`) before
anything else happens. `record()` writes the call's usage event there and queues
it in memory. A background loop lingers a few milliseconds, then publishes what
has gathered as one JetStream message per tenant (a JSON array of events on
`usage.recorded.v2.<tenant>`) and awaits the acks in the background; acknowledged
events leave the journal, events not acknowledged in time stay parked in it and
are read back and published again once NATS answers — by this life, or by the
gateway's next one. A batch resent after a lost ack may be stored twice in the
stream; the log keeps each event id once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid

import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode_batch
from switchyard_gateway.contracts.events import Event, UsageRecorded, subject_of
from switchyard_gateway.services.gateway.pipeline.call import Call, Outcome
from switchyard_gateway.services.gateway.pipeline.journal import Journal

log = structlog.get_logger()

ACK_TIMEOUT_S = 5.0
MAX_BATCH = 256          # events in one JetStream message
LINGER_S = 0.05          # wait this long for a batch to fill: at most ~20 messages/s per tenant and gateway,
                         # and no publishing work between the calls of a quiet gateway
MAX_IN_FLIGHT = 32       # batches awaiting their ack
TICK_S = 1.0             # parked events are tried again, and long calls' progress written, this often
REPUBLISH_BACKOFF_MAX_S = 10.0   # a republish JetStream refused again waits twice as long each time, up to this
ADOPT_EVERY_S = 30.0     # journals of sibling instances that stopped are looked for this often
Queued = tuple[Event, bytes]      # an event and its encoding (as the journal wrote it)


class UsagePublisher:
    def __init__(self, nc: NATS, journal: Journal) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=ACK_TIMEOUT_S, publish_async_max_pending=4096)
        self.journal = journal
        self.queue: collections.deque[Queued] = collections.deque()
        self._wake = asyncio.Event()
        self._retry = asyncio.Event()
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._confirmations: set[asyncio.Task[None]] = set()
        self.published = 0
        self.parked = 0
        self.parked_at: float | None = None     # when what is parked now began to wait (monotonic), None: nothing
        self.republish_wait_s = TICK_S      # doubles with each republish refused again, back at TICK_S once one goes

    async def open(self) -> None:
        """Open the journal; what the last life (or a stopped sibling) left is published first."""
        if await self.journal.open() + self.journal.adopt_orphans():
            self.parked_at = time.monotonic()
            self._retry.set()

    # -- the proxy's hooks ---------------------------------------------------------------------

    def accepted(self, call: Call, model: str, prompt_tokens: int | None = None) -> int:
        """A call was accepted: journal it; the number returned is what `journaling` watches."""
        return self.journal.accepted(call, model, prompt_tokens)

    def journaling(self, accepted: int) -> asyncio.Future[None] | None:
        """What to await until an acceptance is safe; None if it is (always, unless the journal syncs to disk)."""
        return self.journal.pending(accepted)

    def refused(self, call: Call) -> None:
        """An accepted call was refused after all (over a quota): no usage event will come."""
        self.journal.refused(call)

    def serving(self, call: Call, outcome: Outcome) -> None:
        """The call is about to be dispatched: the journal follows its outcome while it runs long."""
        self.journal.serving(call, outcome)

    def record(self, event: UsageRecorded) -> None:
        """Journal a finished call's usage event and queue it for publishing; returns at once."""
        self.queue.append((event, self.journal.finished(event)))
        if not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        """Usage events JetStream has not acknowledged yet (queued, awaiting their ack, or parked)."""
        return len(self.journal.unacknowledged)

    @property
    def waiting_s(self) -> float:
        """How long usage events have been parked without JetStream taking them all (0: none is parked)."""
        return 0.0 if self.parked_at is None else time.monotonic() - self.parked_at

    # -- publishing ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Publish queued events until cancelled; publish parked ones whenever NATS is connected."""
        retry = asyncio.ensure_future(self._retry_loop())
        try:
            while True:
                if not self.queue:
                    self._wake.clear()
                    await self._wake.wait()
                if len(self.queue) < MAX_BATCH:
                    await asyncio.sleep(LINGER_S)
                await self._publish(self._take(MAX_BATCH * 4))
        finally:
            retry.cancel()

    def _take(self, limit: int) -> list[Queued]:
        return [self.queue.popleft() for _ in range(min(len(self.queue), limit))]

    async def _publish(self, events: list[Queued]) -> None:
        """Publish events as one message per tenant and batch; acks are awaited in the background."""
        for batch in _batches(events):
            await self._in_flight.acquire()
            future = await self._send(batch)
            if future is None:
                self._in_flight.release()
                self._park(batch)
                continue
            task = asyncio.ensure_future(self._confirm(batch, future))
            self._confirmations.add(task)
            task.add_done_callback(self._confirmations.discard)

    async def _send(self, batch: list[Queued]) -> asyncio.Future | None:
        if not self.nc.is_connected:
            return None
        first = batch[0][0]
        try:
            return await self.js.publish_async(
                subject_of(first), b"[" + b",".join(raw for _, raw in batch) + b"]", wait_stall=ACK_TIMEOUT_S,
                headers={subjects.MSG_ID_HEADER: f"{first.event_id}+{len(batch)}"},
            )
        except Exception:  # noqa: BLE001 — NATS trouble: leave it parked in the journal
            return None

    async def _confirm(self, batch: list[Queued], future: asyncio.Future) -> None:
        try:
            await asyncio.wait_for(future, ACK_TIMEOUT_S)
            self.published += len(batch)
            self.journal.acknowledged(_ids(batch))
        except Exception:  # noqa: BLE001 — no ack (timeout, NATS down, stream error): it stays in the journal
            self._park(batch)
        finally:
            self._in_flight.release()

    def _park(self, batch: list[Queued]) -> None:
        self.journal.park(_ids(batch))
        self.parked += len(batch)
        if self.parked_at is None:
            self.parked_at = time.monotonic()
        log.warning("usage.parked", events=len(batch), parked=self.journal.parked_count)

    async def _retry_loop(self) -> None:
        """Every tick: publish parked events (NATS answering), write long calls' progress; now and then, take
        over the journals of sibling instances that stopped."""
        adopted_at = time.monotonic()
        republish_at = 0.0
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._retry.wait(), TICK_S)
            self._retry.clear()
            self.journal.note_progress(time.time())
            if time.monotonic() - adopted_at > ADOPT_EVERY_S:
                adopted_at = time.monotonic()
                if self.journal.adopt_orphans():
                    self.parked_at = self.parked_at or time.monotonic()
                    self._retry.set()
            if time.monotonic() >= republish_at and not await self._republish():
                # refused again (JetStream without quorum answers at once): wait longer before the next try, not
                # a loop as fast as refusals come (2,000 tries and two log lines each a second)
                republish_at = time.monotonic() + self.republish_wait_s
                self.republish_wait_s = min(self.republish_wait_s * 2, REPUBLISH_BACKOFF_MAX_S)

    async def _republish(self) -> bool:
        """Publish what is parked, round after round while JetStream takes it; False when a round was refused
        (parked again)."""
        while self.journal.parked and self.nc.is_connected:
            refused = self.parked
            events = self.journal.take_parked(MAX_BATCH * 16)
            log.info("usage.republishing", events=len(events))
            await self._publish(events)
            if self._confirmations:
                await asyncio.gather(*self._confirmations, return_exceptions=True)
            if self.parked > refused:
                return False
        if not self.journal.parked:
            self.parked_at = None               # all that waited is taken
        self.republish_wait_s = TICK_S
        return True

    async def drain(self, timeout_s: float = 2.0) -> None:
        """On shutdown: publish what is queued and wait for the acks; what is left stays in the journal."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.queue:
                    await self._publish(self._take(MAX_BATCH * 4))
                if self._confirmations:
                    await asyncio.gather(*self._confirmations, return_exceptions=True)
        if self.queue:
            self._park(self._take(len(self.queue)))
        self.journal.close()


def _ids(batch: list[Queued]) -> list[uuid.UUID]:
    return [event.event_id for event, _ in batch]


def _batches(events: list[Queued]) -> list[list[Queued]]:
    """Group events by subject (type and tenant), at most MAX_BATCH to a message, order kept."""
    groups: dict[str, list[Queued]] = {}
    for queued in events:
        groups.setdefault(subject_of(queued[0]), []).append(queued)
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
