"""The quota service's source of truth for limits: `LimitsSet` events in the log, published to LIMITS.

Like the registry's: a change runs under an advisory lock against limits brought up to date from the
log, its event is appended, then published from the log with the event id as message id
(`switchyard_gateway.events.Outbox`), so a crash only delays it.
"""

from __future__ import annotations

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.quota import LimitsSet, SetLimits, SetLimitsReply
from switchyard_gateway.events import LogFold, Outbox
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.quotas.limits import InvalidLimits, LimitsBook, merge

log = structlog.get_logger()

LIMITS_LOCK = 0x5359_5154_41  # "SYQTA"
OUTBOX = "quota.outbox"
TYPES = (subjects.LIMITS_SET,)


class LimitsStore:
    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        self.book = LimitsBook()
        self.outbox = Outbox(pool, nc, name=OUTBOX, stream=subjects.STREAM_LIMITS, types=TYPES,
                             apply=self.book.apply, lock=LIMITS_LOCK)

    @property
    def limits(self) -> LogFold:
        """The book's fold of the log (its position says how far it has read)."""
        return self.outbox.fold

    async def load(self) -> None:
        """Fold every LimitsSet in the log; republish them all if the stream lost any."""
        await self.outbox.start()

    async def catch_up(self) -> None:
        """Fold what other replicas recorded since: views and gauges read the book right after."""
        await self.outbox.catch_up()

    async def set_limits(self, command: SetLimits) -> SetLimitsReply:
        """Merge an update into the current limits; record a LimitsSet unless nothing changed."""

        def decided() -> tuple[SetLimitsReply, list[Event]]:
            per_model = bool(command.model_id)
            current = self.book.model(command.tenant_id, command.model_id) if per_model \
                else self.book.tenant(command.tenant_id)
            try:
                new = merge(current, command.update, per_model=per_model)
            except InvalidLimits as exc:
                raise ServiceError(400, ErrorBody("VALIDATION_ERROR", str(exc), exc.field)) from None
            if new == current and self._known(command):
                return SetLimitsReply(limits=new), []
            event = LimitsSet(tenant_id=command.tenant_id, model_id=command.model_id, limits=new)
            return SetLimitsReply(limits=new, event=event), [event]

        reply = await self.outbox.record(decided)
        if reply.event is not None:
            log.info("quota.limits_set", tenant=command.tenant_id, model=command.model_id or None)
        return reply

    def _known(self, command: SetLimits) -> bool:
        if command.model_id:
            return command.model_id in self.book.models.get(command.tenant_id, {})
        return command.tenant_id in self.book.tenants
