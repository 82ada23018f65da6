"""Retries of dead letters followed live: each retry asked of one consumer handed to it in order, from a sequence on.

    async def take(asked: EventRetryRequested, sequence: int) -> None:
        ...                                      # take the event again if it is still set aside; note `sequence`

    await follow_retries(nc, "quota.outbox", take, after=last_taken)      # until cancelled

`switchyard events dead-letters --retry` records an `EventRetryRequested` on `event.retry_requested.v1.<consumer>`
(stream DEADLETTER). The consumer follows its own through a `StreamTail` from the one after `await after()`, the
last it took: only it knows whether the event is still set aside, so `take` decides, and notes the retry's
sequence where `after` reads it. Anything that goes wrong (NATS away, the tail lost, `take` failing on an outage)
starts the tail over from `after()`, so a retry is handed over again until `take` returned for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.deadletters import EventRetryRequested
from switchyard_gateway.events.door import Door
from switchyard_gateway.events.tail import StreamTail
from switchyard_gateway.kit.retry import Backoff, honour_cancel

log = structlog.get_logger()
# Retries are rare and asked by an operator: an idle follower hears from its consumer this seldom (one per
# fold of every process, so the idle stack stays quiet), and notices a lost tail within twice that.
HEARTBEAT_S = 30.0

Take = Callable[[EventRetryRequested, int], Awaitable[object]]      # (the retry, its DEADLETTER sequence)
_retry = msgspec.json.Decoder(EventRetryRequested)


async def follow_retries(nc: NATS, consumer: str, take: Take, after: Callable[[], Awaitable[int]], *,
                         max_queued: int = 10_000, door: Door | None = None) -> None:
    """Hand each retry asked of `consumer` past the sequence `after()` names to `take`, one at a time; until
    cancelled. A message on the subject that is no retry is logged and passed over. A subscriber follows through
    its `door`."""
    backoff = Backoff(0.5, 10.0)
    subject = f"{subjects.EVENT_RETRY_REQUESTED}.{subjects.subject_token(consumer)}"
    while True:
        honour_cancel()
        try:
            tail = StreamTail(nc, subjects.STREAM_DEADLETTER, [subject], await after() + 1, f"{consumer}-retries",
                              max_queued, heartbeat_s=HEARTBEAT_S, door=door)
            await tail.start()
            try:
                while True:
                    for msg in await tail.take(1, 0):
                        try:
                            asked = _retry.decode(msg.data)
                        except msgspec.DecodeError as exc:
                            log.error("events.retry_unreadable", consumer=consumer, error=str(exc),
                                      dead_letter=msg.metadata.sequence.stream)
                            continue
                        await take(asked, msg.metadata.sequence.stream)
                    backoff.reset()
            finally:
                await tail.stop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — NATS or PostgreSQL away, or the tail lost: start over
            log.info("events.retries_interrupted", consumer=consumer, error=str(exc) or type(exc).__name__)
            await backoff.wait()
