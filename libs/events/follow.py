"""Fold events into memory, each once and in order: from a JetStream stream (`StreamFold`) or from the log (`LogFold`).

`StreamFold` replays a stream (all of it, or the last message per subject) through an ordered
consumer of its own, is ready once it reached the stream's end as it was at start, then follows it; a caller
that just caused events gets read-your-writes with `wait_for(event_ids)` or `sequence.reach(seq)`
(the sequence a publish acknowledgement names). `LogFold` is caught up from the log past its own
position when its owner asks (`catch_up`), and takes the owner's own appends (`fold`) in between. In both, an
event that does not decode or whose fold raises is set aside on DEADLETTER and the fold goes on; a retry brings
it back (a stream's, published again on its subject; the log's, through `LogFold.retake`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts.codec import decode_event, decode_events, encode
from switchyard_gateway.contracts.deadletters import LOG_SOURCE
from switchyard_gateway.contracts.events import Event, subject_of
from switchyard_gateway.events.deadletter import DEAD_LETTERS, DeadLetters, describe, events_of
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.kit.retry import Backoff
from switchyard_gateway.kit import eventlog

log = structlog.get_logger()
SEEN_MAX = 4096                 # event ids remembered for wait_for
HEARTBEAT_S = 5.0               # the server's sign of life on an idle consumer
INACTIVE_THRESHOLD_S = 30.0     # a consumer nobody listens to is dropped by the server after this


def status_of(msg: Msg, taken: int) -> str | None:
    """What a push consumer's status message says: `missed` (a heartbeat naming a consumer sequence past `taken`,
    the last one taken), `idle` (a heartbeat, nothing missed) or `ended: <status> <description>`; None for a
    message that is no status."""
    headers = msg.headers or {}
    status = headers.get("Status")
    if not status:
        return None
    if status != "100":
        return f"ended: {status} {headers.get('Description', '')}".strip()
    last = headers.get("Nats-Last-Consumer")
    return "missed" if last is not None and int(last) > taken else "idle"


def metadata_of(msg: Msg) -> Any | None:
    """A JetStream delivery's metadata (sequences, pending); None for any other message."""
    try:
        return msg.metadata
    except Exception:  # noqa: BLE001 — not a JetStream delivery
        return None


class StreamFold:
    """A stream folded into memory by `fold(event)`: replayed, caught up, then followed.

    It runs its own ordered push consumer (ephemeral, in memory, no acks, no flow control): each
    message must carry the next consumer sequence, else the consumer is made anew from the stream
    sequence after the last one folded; so is one whose heartbeats stop (the server restarted, or
    dropped it while the connection was down). Idle, that is one heartbeat from the server every
    `heartbeat_s` and one look every twice that, nothing else.
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
        self._sub = await nc.subscribe(nc.new_inbox(), cb=self._on_message)
        await self._consume(from_start=True)
        self._watch = asyncio.ensure_future(self._watch_heartbeats())
        if info.state.messages == 0 or self.sequence.value >= info.state.last_seq:
            self.ready.set()
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        for task in (self._watch, self._resetting):
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
            policy, start = DeliverPolicy.BY_START_SEQUENCE, self.sequence.value + 1
        name = f"fold-{uuid.uuid4().hex}"     # named before it exists: its first deliveries may beat the reply
        config = ConsumerConfig(
            name=name, deliver_subject=self._sub.subject, deliver_policy=policy, opt_start_seq=start,
            filter_subject=">", ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=False,
            idle_heartbeat=self.heartbeat_s, mem_storage=True, num_replicas=1, inactive_threshold=INACTIVE_THRESHOLD_S,
        )
        self._consumer, self._consumer_seq, self._heard = name, 0, True
        await self._nc.jetstream(timeout=10).add_consumer(self.stream, config)

    async def _drop_consumer(self) -> None:
        if self._nc is not None and self._consumer and self._nc.is_connected:
            with contextlib.suppress(Exception):      # gone already, or NATS away: it expires by itself
                await self._nc.jetstream(timeout=2).delete_consumer(self.stream, self._consumer)
        self._consumer = ""

    def _reset(self, why: str) -> None:
        """Make the consumer anew past the last message folded (once at a time)."""
        if self._resetting is not None and not self._resetting.done():
            return
        log.info("follow.reset", stream=self.stream, reason=why, after=self.sequence.value)
        self.resets += 1
        self._consumer = ""                  # deliveries of the old consumer are ignored from now on

        async def reset() -> None:
            backoff = Backoff(first_s=0.2, max_s=5.0)
            while True:
                try:
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
        try:
            events = decode_events(msg.data)
        except Exception:  # noqa: BLE001 — one bad message must not stop the fold: what does not decode is set aside
            events = await events_of(msg.data, lambda data, exc, key: self._set_aside(msg, "decode", exc, data, key))
        for event in events:
            try:
                self.fold(event)
            except Exception as exc:  # noqa: BLE001 — nor one its fold cannot take
                await self._set_aside(msg, "apply", exc, encode(event), str(event.event_id))
            self._note(str(event.event_id))
        self.sequence.advance(meta.sequence.stream)
        if not self.ready.is_set() and meta.num_pending == 0:
            self.ready.set()

    async def _set_aside(self, msg: Msg, stage: str, exc: BaseException, data: bytes, key: str) -> None:
        """Keep an event the fold cannot take on DEADLETTER; if NATS will not keep it either, say so and go on
        (a fold of a stream has no redelivery to wait for)."""
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


class LogFold:
    """Some event types of the log folded into memory by `apply(event)`: each event once, in log order,
    whether it comes from `catch_up` or from the owner's own append (`fold`); an event at or below the
    position (a concurrent catch-up handed it over already) is skipped. One that does not decode or that
    `apply` refuses is set aside (on DEADLETTER as `name` when given `letters`, else logged and counted) and
    noted in `aside` until `retake` takes it again (a retry: see `Outbox.follow_retries`).

    `retake` reads the event from the log (not from the retry: the fold is the log's, and this build may read
    the stored event better than the one that set it aside) and applies it, then every later event it holds
    again in log order: its folds set or drop what an event names, so the result is what log order gives (a
    model registered and then removed stays removed). A fold in memory starts from nothing and reads the whole
    log again, so a new process owes nothing to retries asked of an earlier one.
    """

    def __init__(self, types: Iterable[str], apply: Callable[[Event], object], *, name: str = "log-fold",
                 letters: DeadLetters | None = None) -> None:
        self.types, self.apply = frozenset(types), apply
        self.name, self.letters = name, letters
        self.position = Watermark()
        self.aside: set[int] = set()         # positions set aside and not taken again since
        self.retried = Watermark()           # the DEADLETTER sequence of the last retry taken
        self._setting_aside: set[asyncio.Task[None]] = set()

    async def catch_up(self, conn: asyncpg.Connection, chunk: int = 10_000) -> int:
        """Fold what the log holds past this fold's position; return the position."""
        upto = await eventlog.head(conn)
        while True:
            rows = await eventlog.read_rows(conn, self.position.value, self.types, upto, chunk)
            for position, _kind, payload in rows:
                if position > self.position.value:
                    self._take(position, payload)
                    self.position.advance(position)
            if len(rows) < chunk:
                return self.position.value

    def fold(self, position: int, event: Event) -> None:
        if position > self.position.value:
            self._apply(position, event)
            self.position.advance(position)

    async def retake(self, conn: asyncpg.Connection, position: int, key: str = "", chunk: int = 10_000) -> str:
        """Take the event set aside at `position` again, once, and then the events after it again; return what
        happened: `applied`, `set aside again` (its dead letter told apart by `key`) or `not set aside here`
        (taken already, or never refused by this process)."""
        if position not in self.aside:
            return "not set aside here"
        rows: list[asyncpg.Record] = []
        after, upto = position - 1, self.position.value
        while True:                                  # until nothing was folded while the log was read
            more = await eventlog.read_rows(conn, after, self.types, upto, chunk)
            rows += more
            if len(more) == chunk:
                after = more[-1][0]
            elif upto < self.position.value:
                after, upto = upto, self.position.value
            else:
                break
        if position not in self.aside or not rows or rows[0][0] != position:
            return "not set aside here"
        self.aside.discard(position)                  # from here on synchronous: nothing else folds in between
        if not self._take(position, rows[0][2], key):
            return "set aside again"
        for later, _kind, payload in rows[1:]:
            if later not in self.aside:
                self._take(later, payload, key)
        return "applied"

    def _take(self, position: int, payload: str, key: str = "") -> bool:
        """Decode a stored event and apply it; set it aside if either fails."""
        try:
            event = decode_event(payload)
        except Exception as exc:  # noqa: BLE001 — not one this build reads: set aside, go on
            self._set_aside(position, "decode", exc, payload.encode(), "", key)
            return False
        return self._apply(position, event, key)

    def _apply(self, position: int, event: Event, key: str = "") -> bool:
        try:
            self.apply(event)
            return True
        except Exception as exc:  # noqa: BLE001 — one event the fold cannot take must not stop it
            self._set_aside(position, "apply", exc, encode(event), subject_of(event), key)
            return False

    def _set_aside(self, position: int, stage: str, exc: BaseException, data: bytes, subject: str, key: str) -> None:
        self.aside.add(position)
        if self.letters is None:
            DEAD_LETTERS.labels(self.name, stage).inc()
            log.error("follow.event_set_aside", fold=self.name, stage=stage, position=position, error=describe(exc))
            return
        put = self.letters.put(stage=stage, error=exc, source=LOG_SOURCE, subject=subject,  # type: ignore[arg-type]
                               sequence=position, data=data, key=key)
        task = asyncio.ensure_future(put)            # folds are synchronous: the dead letter is kept meanwhile
        self._setting_aside.add(task)
        task.add_done_callback(self._set_aside_done)

    def _set_aside_done(self, task: asyncio.Task[None]) -> None:
        self._setting_aside.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("follow.dead_letter_lost", fold=self.name, why=describe(task.exception()))
