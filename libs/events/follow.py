"""Fold events into memory, each once and in order: from a JetStream stream (`StreamFold`) or from the log (`LogFold`).

`StreamFold` replays a stream (all of it, or the last message per subject) through an ordered
consumer, is ready once it reached the stream's end as it was at start, then follows it; a caller
that just caused events gets read-your-writes with `wait_for(event_ids)` or `sequence.reach(seq)`
(the sequence a publish acknowledgement names). `LogFold` is caught up from the log past its own
position when its owner asks (`catch_up`), and takes the owner's own appends (`fold`) in between.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import asyncpg
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from switchyard_gateway.contracts.codec import decode_events
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.kit import eventlog

log = structlog.get_logger()
SEEN_MAX = 4096                 # event ids remembered for wait_for
IDLE_HEARTBEAT_S = 5.0          # the server's sign of life on an idle ordered consumer


class StreamFold:
    """A stream folded into memory by `fold(event)`: replayed, caught up, then followed."""

    def __init__(self, stream: str, fold: Callable[[Event], object], *, last_per_subject: bool = False) -> None:
        self.stream = stream
        self.fold = fold
        self.policy = DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
        self.sequence = Watermark()          # the stream sequence of the last message folded
        self.ready = asyncio.Event()
        self._sub: object | None = None
        self._seen: dict[str, None] = {}     # recently folded event ids, oldest first
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Subscribe, and return once caught up to the stream's end as it is now."""
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(self.stream)
        self._sub = await js.subscribe(
            ">", stream=self.stream, ordered_consumer=True, deliver_policy=self.policy,
            cb=self._on_message, idle_heartbeat=IDLE_HEARTBEAT_S,
        )
        if info.state.messages == 0 or self.sequence.value >= info.state.last_seq:
            self.ready.set()
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):      # closing anyway
                await sub.unsubscribe()  # type: ignore[attr-defined]

    async def _on_message(self, msg: Msg) -> None:
        try:
            events = decode_events(msg.data)
        except Exception:  # noqa: BLE001 — one bad message must not stop the fold
            log.exception("follow.bad_event", stream=self.stream, subject=msg.subject)
            events = []
        for event in events:
            self.fold(event)
            self._note(str(event.event_id))
        meta = msg.metadata
        self.sequence.advance(meta.sequence.stream)
        if not self.ready.is_set() and meta.num_pending == 0:
            self.ready.set()

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
    position (a concurrent catch-up handed it over already) is skipped."""

    def __init__(self, types: Iterable[str], apply: Callable[[Event], object]) -> None:
        self.types, self.apply = frozenset(types), apply
        self.position = Watermark()

    async def catch_up(self, conn: asyncpg.Connection) -> int:
        """Fold what the log holds past this fold's position; return the position."""
        async for batch in eventlog.read_all(conn, self.position.value, self.types):
            for position, event in batch:
                self.fold(position, event)
        return self.position.value

    def fold(self, position: int, event: Event) -> None:
        if position > self.position.value:
            self.apply(event)
            self.position.advance(position)
