"""A stream read from a sequence on, for a reader that keeps its own position: any trouble ends it, and the reader
starts again from where it is.

    tail = StreamTail(nc, "LOG", ["log.usage.>"], sequence=1234, owner="tenant-spend", max_queued=10_000)
    await tail.start()
    msgs = await tail.take(most=5000, linger_s=0.05)      # raises TailLost once it cannot be trusted to be whole

Unlike `StreamFold`, which makes its consumer anew past what it folded, a tail gives up: its reader (a subscriber
of the log) goes back to a source it trusts more (replay from its own position) rather than to the stream. The
client reconnecting ends it at once: the consumer, kept in the server's memory, is gone when NATS restarted, and
its heartbeats would say so only after two of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from switchyard_gateway.contracts.metering import Follow
from switchyard_gateway.events.door import Door
from switchyard_gateway.kit import natsio


HEARTBEAT_S = 5.0


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


class TailLost(Exception):
    """The tail stopped being whole (a gap, silence, a queue too long, the consumer gone)."""


class StreamTail:
    """An ephemeral push consumer of `stream` from `sequence`, filtered, without acks: `take` hands out the
    messages in order; a gap, two silent heartbeats, the consumer's end, the client reconnecting or more than
    `max_queued` messages waiting end it with TailLost. `heartbeat_s`: how often an idle consumer says it is
    there."""

    def __init__(self, nc: NATS, stream: str, filters: list[str], sequence: int, owner: str, max_queued: int,
                 heartbeat_s: float = HEARTBEAT_S, door: Door | None = None) -> None:
        self.nc, self.stream, self.filters, self.sequence = nc, stream, filters, sequence
        self.door = door                     # a subscriber's: metering makes and deletes the consumer
        self.heartbeat_s = heartbeat_s
        self.name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', owner)[:40]}-{uuid.uuid4().hex[:12]}"
        self.max_queued = max_queued
        self.queue: asyncio.Queue[Msg | TailLost] = asyncio.Queue()
        self._consumer_seq = 0
        self._heard = True
        self._sub: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._made = False                   # through the door: whether metering made the consumer
        self._unlisten: Callable[[], None] | None = None

    async def start(self) -> None:
        self._unlisten = natsio.on_reconnected(self.nc, lambda: self._lost("NATS reconnected"))
        try:
            await self._start()
        except BaseException:
            self._unlisten()                 # a reader that gives up on a failed start calls no `stop`
            self._unlisten = None
            raise

    async def _start(self) -> None:
        self._sub = await self.nc.subscribe(self.nc.new_inbox(), cb=self._on_message)
        if self.door is not None:
            self.name = await self.door.follow(Follow(self.stream, max(self.sequence, 1), self.filters,
                                                      self._sub.subject, self.heartbeat_s))
            self._made = True
            self._watch = asyncio.ensure_future(self._watch_heartbeats())
            return
        one = self.filters[0] if len(self.filters) == 1 else None
        config = ConsumerConfig(
            name=self.name, deliver_subject=self._sub.subject, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(self.sequence, 1), filter_subject=one, filter_subjects=None if one else self.filters,
            ack_policy=AckPolicy.NONE, max_deliver=1, flow_control=False, idle_heartbeat=self.heartbeat_s,
            mem_storage=True, num_replicas=1, inactive_threshold=30.0,
        )
        await self.nc.jetstream(timeout=10).add_consumer(self.stream, config)
        self._watch = asyncio.ensure_future(self._watch_heartbeats())

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._watch is not None:
            self._watch.cancel()
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        if self.nc.is_connected:
            with contextlib.suppress(Exception):      # else it expires by itself (inactive threshold)
                if self.door is not None:
                    if self._made:
                        await self.door.unfollow(self.stream, self.name)
                else:
                    await self.nc.jetstream(timeout=2).delete_consumer(self.stream, self.name)

    async def take(self, most: int, linger_s: float) -> list[Msg]:
        """The next message, and whatever else arrives within `linger_s` (at most `most`); raises TailLost."""
        first = await self.queue.get()
        if isinstance(first, TailLost):
            raise first
        taken = [first]
        deadline = asyncio.get_running_loop().time() + linger_s
        while len(taken) < most:
            if self.queue.empty():
                wait = deadline - asyncio.get_running_loop().time()
                if wait <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), wait)
                except asyncio.TimeoutError:
                    break
            else:
                item = self.queue.get_nowait()
            if isinstance(item, TailLost):
                self.queue.put_nowait(item)        # after what came before it
                break
            taken.append(item)
        return taken

    def _lost(self, why: str) -> None:
        if self._consumer_seq >= 0:
            self._consumer_seq = -1                # nothing more is queued after this
            self.queue.put_nowait(TailLost(why))

    async def _on_message(self, msg: Msg) -> None:
        if self._consumer_seq < 0:
            return
        self._heard = True
        said = status_of(msg, self._consumer_seq)
        if said is not None:                       # a heartbeat (did we miss anything?), or the consumer's end
            if said != "idle":
                self._lost("missed messages" if said == "missed" else f"consumer {said}")
            return
        meta = metadata_of(msg)
        if meta is None:
            return
        if meta.sequence.consumer != self._consumer_seq + 1:
            self._lost("missed messages")
            return
        self._consumer_seq = meta.sequence.consumer
        if self.queue.qsize() >= self.max_queued:
            self._lost("falling behind")
            return
        self.queue.put_nowait(msg)

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(2 * self.heartbeat_s)
            if not self._heard:
                self._lost("no heartbeat")
                return
            self._heard = False
