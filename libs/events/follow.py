"""Fold a JetStream stream into memory, each message once and in order (`StreamFold`); what it cannot take is set
aside on DEADLETTER, and taken again when a retry asks, followed by what came after it.

`StreamFold` replays a stream (all of it, or the last message per subject) through an ordered
consumer of its own, is ready once it reached the stream's end as it was at start, then follows it; a caller
that just caused events gets read-your-writes with `wait_for(event_ids)` or `sequence.reach(seq)`
(the sequence a publish acknowledgement names). The log's counterpart is `events.logfold.LogFold`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_events, encode
from switchyard_gateway.contracts.deadletters import EventRetryRequested
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.events.deadletter import DeadLetters, describe, events_of
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.events.retries import follow_retries
from switchyard_gateway.events.tail import metadata_of, status_of
from switchyard_gateway.kit.retry import Backoff

log = structlog.get_logger()
SEEN_MAX = 4096                 # event ids remembered for wait_for
HEARTBEAT_S = 5.0               # the server's sign of life on an idle consumer
INACTIVE_THRESHOLD_S = 30.0     # a consumer nobody listens to is dropped by the server after this


@dataclass
class Refold:
    """A retry being taken: the message set aside at `sequence`, then every message through `through` again."""

    sequence: int
    through: int
    key: str
    done: asyncio.Future[str]
    outcome: str = "not in the stream"


class StreamFold:
    """A stream folded into memory by `fold(event)`: replayed, caught up, then followed.

    It runs its own ordered push consumer (ephemeral, in memory, no acks, no flow control): each
    message must carry the next consumer sequence, else the consumer is made anew from the stream
    sequence after the last one folded; so is one whose heartbeats stop (the server restarted, or
    dropped it while the connection was down). Idle, that is one heartbeat from the server every
    `heartbeat_s` and one look every twice that, nothing else.

    A message it sets aside is noted in `aside`; from its start it follows the retries asked of it
    (`switchyard events dead-letters --retry`) and takes each once (`retake`): the consumer is made anew from
    that message, which is folded again, and so is every message after it that was folded already, so the
    fold ends as stream order has it (its folds set or drop what an event names: a model registered, set
    aside, then removed stays removed).
    """

    def __init__(self, stream: str, fold: Callable[[Event], object], *, last_per_subject: bool = False,
                 heartbeat_s: float = HEARTBEAT_S, name: str | None = None) -> None:
        self.stream = stream
        self.name = name                     # as a consumer that sets events aside; `<client name>:<stream>` if None
        self.fold = fold
        self.last_per_subject = last_per_subject
        self.heartbeat_s = heartbeat_s
        self.sequence = Watermark()          # the stream sequence of the last message folded
        self.ready = asyncio.Event()
        self.resets = 0                      # consumers made anew after a gap or silence
        self.aside: set[int] = set()         # stream sequences of messages set aside, not taken again since
        self.retried = Watermark()           # the DEADLETTER sequence of the last retry taken
        self._refold: Refold | None = None
        self._retries: asyncio.Task[None] | None = None
        self._nc: NATS | None = None
        self._sub: Any = None
        self._consumer = ""
        self._consumer_seq = 0               # the consumer sequence of the last message folded
        self._heard = False                  # anything from the consumer since the last look
        self._resetting: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._seen: dict[str, None] = {}     # recently folded event ids, oldest first
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Subscribe, and return once caught up to the stream's end as it is now."""
        self._nc = nc
        self.name = self.name or f"{nc.options.get('name') or 'fold'}:{self.stream}"
        self.letters = DeadLetters(nc, self.name)
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(self.stream)
        try:                                 # retries asked before the replay are not this fold's to take
            self.retried.advance((await js.stream_info(subjects.STREAM_DEADLETTER)).state.last_seq)
            retries = True
        except NotFoundError:
            retries = False
        self._sub = await nc.subscribe(nc.new_inbox(), cb=self._on_message)
        await self._consume(from_start=True)
        self._watch = asyncio.ensure_future(self._watch_heartbeats())
        if info.state.messages == 0 or self.sequence.value >= info.state.last_seq:
            self.ready.set()
        await asyncio.wait_for(self.ready.wait(), timeout_s)
        if retries:
            self._retries = asyncio.ensure_future(follow_retries(nc, self.name, self._take_retry, self._last_retry))

    async def stop(self) -> None:
        for task in (self._watch, self._resetting, self._retries):
            if task is not None:
                task.cancel()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):      # closing anyway
                await sub.unsubscribe()
        await self._drop_consumer()

    async def _consume(self, *, from_start: bool) -> None:
        """Make the consumer: from the stream's start (or last message per subject), or past what was folded."""
        assert self._nc is not None and self._sub is not None
        if from_start:
            policy, start = (DeliverPolicy.LAST_PER_SUBJECT if self.last_per_subject else DeliverPolicy.ALL), None
        else:
            policy = DeliverPolicy.BY_START_SEQUENCE
            start = self._refold.sequence if self._refold is not None else self.sequence.value + 1
        name = f"fold-{uuid.uuid4().hex}"     # named before it exists: its first deliveries may beat the reply
        config = ConsumerConfig(
            name=name, deliver_subject=self._sub.subject, deliver_policy=policy, opt_start_seq=start,
            filter_subject=">", ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=False,
            idle_heartbeat=self.heartbeat_s, mem_storage=True, num_replicas=1, inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        self._consumer, self._consumer_seq, self._heard = name, 0, True
        await self._nc.jetstream(timeout=10).add_consumer(self.stream, config)

    async def _drop_consumer(self) -> None:
        await self._delete_consumer(self._consumer)
        self._consumer = ""

    async def _delete_consumer(self, name: str) -> None:
        if self._nc is not None and name and self._nc.is_connected:
            with contextlib.suppress(Exception):      # gone already, or NATS away: it expires by itself
                await self._nc.jetstream(timeout=2).delete_consumer(self.stream, name)

    def _reset(self, why: str, counted: bool = True) -> None:
        """Make the consumer anew past the last message folded, or from a retried one (once at a time), on an inbox
        of its own: the old consumer is deleted and its inbox given up, so that nothing it still sends (a heartbeat
        whose sequence runs ahead of the new consumer's reads as messages missed) resets the fold again. Sharing
        one inbox, a reset made another after every heartbeat, each consumer kept alive by the inbox's interest:
        one more every 5 s, without end, after a NATS node of a cluster died."""
        if self._resetting is not None and not self._resetting.done():
            return
        log.info("follow.reset", stream=self.stream, reason=why, after=self.sequence.value)
        self.resets += counted
        stale, stale_sub = self._consumer, self._sub
        self._consumer = ""                  # deliveries of the old consumer are ignored from now on

        async def reset() -> None:
            backoff = Backoff(first_s=0.2, max_s=5.0)
            if stale_sub is not None:
                with contextlib.suppress(Exception):      # NATS away: the subscription goes with the connection
                    await stale_sub.unsubscribe()
            await self._delete_consumer(stale)
            while True:
                try:
                    assert self._nc is not None
                    if self._sub is stale_sub:
                        self._sub = await self._nc.subscribe(self._nc.new_inbox(), cb=self._on_message)
                    await self._consume(from_start=False)
                    return
                except Exception as exc:  # noqa: BLE001 — NATS away: try again
                    log.warning("follow.reset_failed", stream=self.stream, error=str(exc) or type(exc).__name__)
                    await backoff.wait()

        self._resetting = asyncio.ensure_future(reset())

    async def _watch_heartbeats(self) -> None:
        """Every two heartbeats: if the consumer said nothing at all, it is gone: make it anew."""
        while True:
            await asyncio.sleep(2 * self.heartbeat_s)
            if not self._heard and self._consumer and self._nc is not None and self._nc.is_connected:
                self._reset("no heartbeat")
            self._heard = False

    async def _on_message(self, msg: Msg) -> None:
        said = status_of(msg, self._consumer_seq)
        if said is not None:                                       # a heartbeat (100) or another status
            self._heard = True
            if said == "missed" and self._consumer:
                self._reset("missed messages")
            return
        meta = metadata_of(msg)
        if meta is None:
            return
        if meta.consumer != self._consumer:
            return                                                 # from a consumer replaced meanwhile
        self._heard = True
        if meta.sequence.consumer != self._consumer_seq + 1:
            self._reset("missed messages")
            return
        self._consumer_seq = meta.sequence.consumer
        sequence, refold = meta.sequence.stream, self._refold
        if refold is not None and sequence <= refold.through:     # a retry: this one again, then what followed it
            if sequence == refold.sequence:
                self.aside.discard(sequence)
                refold.outcome = "applied" if await self._take(msg, refold.key) else "set aside again"
            else:
                await self._take(msg, refold.key, quiet=sequence in self.aside)
            if sequence == refold.through or meta.num_pending == 0:
                self._end_refold()
            return
        if refold is not None:
            self._end_refold()
        await self._take(msg)
        self.sequence.advance(sequence)
        if not self.ready.is_set() and meta.num_pending == 0:
            self.ready.set()

    async def _take(self, msg: Msg, suffix: str = "", quiet: bool = False) -> bool:
        """Fold a message's events; set aside each that does not decode or that the fold refuses (unless `quiet`: a
        message set aside already, folded again after a retried one). Whether all were taken."""
        set_aside = None if quiet else (lambda data, exc, key: self._set_aside(msg, "decode", exc, data, key + suffix))
        taken = True
        try:
            events = decode_events(msg.data)
        except Exception:  # noqa: BLE001 — one bad message must not stop the fold: what does not decode is set aside
            events, taken = await events_of(msg.data, set_aside), False
        for event in events:
            try:
                self.fold(event)
            except Exception as exc:  # noqa: BLE001 — nor one its fold cannot take
                taken = False
                if not quiet:
                    await self._set_aside(msg, "apply", exc, encode(event), str(event.event_id) + suffix)
            self._note(str(event.event_id))
        return taken

    # --- retries ----------------------------------------------------------------------------------------------

    async def retake(self, sequence: int, key: str = "") -> str:
        """Take the message set aside at `sequence` again, once, then the messages folded after it again; return
        `applied`, `set aside again` (its dead letters told apart by `key`), `not set aside here` (taken already, or
        never refused by this process) or `not in the stream` (gone since: a newer message took its place)."""
        assert self._nc is not None
        if sequence not in self.aside:
            return "not set aside here"
        try:
            await self._nc.jetstream(timeout=10).get_msg(self.stream, sequence)
        except NotFoundError:
            self.aside.discard(sequence)
            return "not in the stream"
        while self._resetting_now():
            await asyncio.shield(self._resetting)  # type: ignore[arg-type]
        self._refold = Refold(sequence, self.sequence.value, key, asyncio.get_running_loop().create_future())
        done, old = self._refold.done, self._consumer
        self._reset("a retry", counted=False)           # its deliveries are ignored from now on
        if old and self._nc.is_connected:
            with contextlib.suppress(Exception):        # alive, its heartbeats would speak of messages the new one lacks
                await self._nc.jetstream(timeout=2).delete_consumer(self.stream, old)
        return await done

    def _end_refold(self) -> None:
        refold, self._refold = self._refold, None
        if refold is not None and not refold.done.done():
            refold.done.set_result(refold.outcome)

    def _resetting_now(self) -> bool:
        return self._resetting is not None and not self._resetting.done()

    async def _take_retry(self, asked: EventRetryRequested, sequence: int) -> None:
        outcome = "not from this stream"
        if asked.source == self.stream:
            outcome = await self.retake(asked.sequence, f":retry{sequence}")
        self.retried.advance(sequence)
        log.info("follow.retried", fold=self.name, dead_letter=asked.dead_letter, sequence=asked.sequence,
                 retry=sequence, outcome=outcome)

    async def _last_retry(self) -> int:
        return self.retried.value

    async def _set_aside(self, msg: Msg, stage: str, exc: BaseException, data: bytes, key: str) -> None:
        """Keep an event the fold cannot take on DEADLETTER; if NATS will not keep it either, say so and go on
        (a fold of a stream has no redelivery to wait for)."""
        self.aside.add(msg.metadata.sequence.stream)
        try:
            await self.letters.put(stage=stage, error=exc, source=self.stream, subject=msg.subject,  # type: ignore[arg-type]
                                   sequence=msg.metadata.sequence.stream, data=data, headers=msg.headers, key=key)
        except Exception as failed:  # noqa: BLE001
            log.error("follow.dead_letter_lost", stream=self.stream, subject=msg.subject, error=describe(exc),
                      why=str(failed) or type(failed).__name__)

    async def wait_for(self, event_ids: Iterable[str], timeout_s: float = 5.0) -> bool:
        """Wait until these events are folded in; False at the deadline."""
        pending = set(event_ids) - self._seen.keys()
        if not pending:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((pending, waiter))
        try:
            await asyncio.wait_for(waiter, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def _note(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > SEEN_MAX:
            del self._seen[next(iter(self._seen))]
        if not self._waiters:
            return
        still = []
        for pending, waiter in self._waiters:
            pending.discard(event_id)
            if not pending and not waiter.done():
                waiter.set_result(None)
            elif not waiter.done():
                still.append((pending, waiter))
        self._waiters = still
