"""The gateway's event-fed copy of the registry: a Catalog kept current from the REGISTRY stream.

No request waits on NATS for auth or routing: the catalog is read in memory.
An ordered consumer replays the stream from its start, then follows it.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from libs.catalog.state import Catalog
from libs.contracts import subjects
from libs.contracts.codec import decode_events

log = structlog.get_logger()


class LocalState:
    def __init__(self) -> None:
        self.catalog = Catalog()
        self.ready = asyncio.Event()
        self._target_seq = 0
        self._sub: object | None = None
        self._seen: dict[str, None] = {}   # recently applied event ids, oldest first
        self._waiters: list[tuple[set[str], asyncio.Future[None]]] = []

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Subscribe from the stream's first message and wait until caught up to its current end."""
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(subjects.STREAM_REGISTRY)
        self._target_seq = info.state.last_seq
        if info.state.messages == 0:
            self.ready.set()
        self._sub = await js.subscribe(
            ">", stream=subjects.STREAM_REGISTRY, ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL, cb=self._on_message, idle_heartbeat=2.0,
        )
        await asyncio.wait_for(self.ready.wait(), timeout_s)
        log.info("catalog.loaded", version=self.catalog.version, tenants=len(self.catalog.tenants),
                 endpoints=len(self.catalog.endpoints), models=len(self.catalog.models))

    async def _on_message(self, msg: Msg) -> None:
        try:
            events = decode_events(msg.data)
        except Exception:  # noqa: BLE001 — one bad message must not stop the feed
            log.exception("catalog.bad_event", subject=msg.subject)
            events = []
        for event in events:
            self.catalog.apply(event)
            self._note(str(event.event_id))
        if not self.ready.is_set() and msg.metadata.sequence.stream >= self._target_seq:
            self.ready.set()

    async def wait_for(self, event_ids: set[str], timeout_s: float = 5.0) -> bool:
        """Wait until events an admin command just recorded are folded in (read-your-writes)."""
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
        if len(self._seen) > 4096:
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
