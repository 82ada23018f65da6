"""The quota service's source of truth for limits: `LimitsSet` events in the log, published to LIMITS.

Like the registry: a change runs under an advisory lock against limits brought up
to date from the log, its event is appended, then published from the log past an
outbox checkpoint with the event id as message id, so a crash only delays it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import subject_of
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.quota import LimitsSet, SetLimits, SetLimitsReply
from switchyard_gateway.kit import eventlog, projections
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.quotas.limits import InvalidLimits, LimitsBook, merge

log = structlog.get_logger()

LIMITS_LOCK = 0x5359_5154_41  # "SYQTA"
OUTBOX = "quota.outbox"
TYPES = (subjects.LIMITS_SET,)


class LimitsStore:
    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        self.pool, self.nc = pool, nc
        self.book = LimitsBook()
        self.limits = eventlog.LogFold(TYPES, self.book.apply)
        self._publish_lock = asyncio.Lock()

    async def load(self) -> None:
        """Fold every LimitsSet in the log; republish them all if the stream lost any."""
        async with self.pool.acquire() as conn:
            await self.limits.catch_up(conn)
            js = self.nc.jetstream(timeout=5)
            info = await js.stream_info(subjects.STREAM_LIMITS)
            in_log = await eventlog.count(conn, subjects.LIMITS_SET)
            if info.state.messages < in_log:
                log.warning("quota.stream_behind_log", stream=info.state.messages, log=in_log)
                await projections.lock_checkpoint(conn, OUTBOX)
                await conn.execute("UPDATE projection_checkpoints SET position = 0 WHERE projection = $1", OUTBOX)
        await self.publish_pending()

    async def catch_up(self) -> None:
        """Fold what other replicas recorded since: views and gauges read the book right after."""
        async with self.pool.acquire() as conn:
            await self.limits.catch_up(conn)

    async def set_limits(self, command: SetLimits) -> SetLimitsReply:
        """Merge an update into the current limits; record a LimitsSet unless nothing changed."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", LIMITS_LOCK)
                await self.limits.catch_up(conn)
                per_model = bool(command.model_id)
                current = self.book.model(command.tenant_id, command.model_id) if per_model \
                    else self.book.tenant(command.tenant_id)
                try:
                    new = merge(current, command.update, per_model=per_model)
                except InvalidLimits as exc:
                    raise ServiceError(400, ErrorBody("VALIDATION_ERROR", str(exc), exc.field)) from None
                if new == current and self._known(command):
                    return SetLimitsReply(limits=new)
                event = LimitsSet(tenant_id=command.tenant_id, model_id=command.model_id, limits=new)
                appended = await eventlog.append(conn, [event])
            for position, folded in appended:
                self.limits.fold(position, folded)
        await self.publish_pending()
        log.info("quota.limits_set", tenant=command.tenant_id, model=command.model_id or None)
        return SetLimitsReply(limits=new, event=event)

    def _known(self, command: SetLimits) -> bool:
        if command.model_id:
            return command.model_id in self.book.models.get(command.tenant_id, {})
        return command.tenant_id in self.book.tenants

    async def publish_pending(self) -> int:
        """Publish LimitsSet events past the outbox checkpoint, in log order."""
        async with self._publish_lock, self.pool.acquire() as conn, conn.transaction():
            after = await projections.lock_checkpoint(conn, OUTBOX)
            js = self.nc.jetstream(timeout=5)
            last, published = after, 0
            async for batch in eventlog.read_all(conn, after, TYPES):
                for position, event in batch:
                    await js.publish(subject_of(event), encode(event),
                                     headers={subjects.MSG_ID_HEADER: str(event.event_id)})
                    last, published = position, published + 1
            if last > after:
                await conn.execute(
                    "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
                    OUTBOX, last)
            return published


