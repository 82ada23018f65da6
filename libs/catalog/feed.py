"""Keep an in-memory fold current from a JetStream stream: an ordered consumer, caught up at start.

`Feed(stream, fold)` replays the stream (all of it, or the last message per subject)
into `fold(event)`, waits until it reached the stream's end as it was at start,
then follows it. `wait_for(event_ids)` gives read-your-writes to a caller that
just caused events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from switchyard_gateway.contracts.codec import decode_events
from switchyard_gateway.contracts.events import Event

log = structlog.get_logger()
SEEN_MAX = 4096


class Feed:
    def __init__(self, stream: str, fold: Callable[[Event], object], *, last_per_subject: bool = False) -> None:
        self.stream = stream
        self.fold = fold
        self.policy = DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
        self.ready = asyncio.Event()
        self._target_seq = 0
        self._sub: object | None = None
        self._seen: dict[str, None] = {}           # recently folded event ids, oldest first
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Subscribe and wait until caught up to the stream's end as it is now."""
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(self.stream)
        self._target_seq = info.state.last_seq
        if info.state.messages == 0:
            self.ready.set()
        self._sub = await js.subscribe(
            ">", stream=self.stream, ordered_consumer=True, deliver_policy=self.policy,
            cb=self._on_message, idle_heartbeat=2.0,
        )
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 — closing anyway
                pass

    async def _on_message(self, msg: Msg) -> None:
        try:
            events = decode_events(msg.data)
        except Exception:  # noqa: BLE001 — one bad message must not stop the feed
            log.exception("feed.bad_event", stream=self.stream, subject=msg.subject)
            events = []
        for event in events:
            self.fold(event)
            self._note(str(event.event_id))
        if not self.ready.is_set():
            meta = msg.metadata
            if meta.sequence.stream >= self._target_seq or meta.num_pending == 0:
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
