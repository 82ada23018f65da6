"""The quota service's source of truth for limits: `LimitsSet` events in the log, published to LIMITS.

Like the registry's: a change runs under an advisory lock against limits brought up to date from the
log, its event is appended, then published from the log with the event id as message id
(`switchyard_gateway.events.Outbox`), so a crash only delays it.

When the registry removes a tenant or a model, the limits it voided (`removals.Removals`: those set before the
removal, or while it was gone) are cleared by compensating `LimitsSet` events of no limits, recorded the same way,
so every reader of LIMITS (the gateways' books) drops them in order and a tenant or model created again under
the same id starts without them. `clear_removed` runs at start and whenever the counters' follower reads a
removal (`removed`); it decides under the lock against the log, so a second replica or a restart records nothing
more, and limits set after the removal are never touched.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.quota import LimitsSet, SetLimits, SetLimitsReply
from switchyard_gateway.events import LogFold, Outbox
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.retry import TRANSIENT, Backoff
from switchyard_gateway.quotas.limits import NO_LIMITS, InvalidLimits, LimitsBook, merge
from switchyard_gateway.services.quota.removals import Removals

log = structlog.get_logger()

LIMITS_LOCK = 0x5359_5154_41  # "SYQTA"
OUTBOX = "quota.outbox"
TYPES = (subjects.LIMITS_SET,)


class LimitsStore:
    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        self.pool = pool
        self.book = LimitsBook()
        self.outbox = Outbox(pool, nc, name=OUTBOX, stream=subjects.STREAM_LIMITS, types=TYPES,
                             apply=self._fold, lock=LIMITS_LOCK)
        self.removals = Removals()
        self._removed = asyncio.Event()

    @property
    def limits(self) -> LogFold:
        """The book's fold of the log (its position says how far it has read)."""
        return self.outbox.fold

    def _fold(self, event: Event) -> None:
        """Fold a LimitsSet into the book at its log position."""
        self.book.apply(event, self.outbox.fold.applying)

    async def load(self) -> None:
        """Fold every LimitsSet in the log; republish them all if the stream lost any; clear what removals voided
        while no quota service was running."""
        await self.outbox.start()
        await self.clear_removed()

    async def catch_up(self) -> None:
        """Fold what other replicas recorded since: views and gauges read the book right after."""
        await self.outbox.catch_up()

    async def set_limits(self, command: SetLimits) -> SetLimitsReply:
        """Merge an update into the current limits; record a LimitsSet unless nothing changed."""

        async with self.pool.acquire() as conn:
            await self.removals.catch_up(conn)

        def decided() -> tuple[SetLimitsReply, list[Event]]:
            if command.tenant_id in self.removals.tenants_gone:
                raise ServiceError(404, ErrorBody("TENANT_NOT_FOUND", f"Tenant '{command.tenant_id}' not found",
                                                  "tenant_id"))
            if command.model_id in self.removals.models_gone:
                raise ServiceError(404, ErrorBody("MODEL_NOT_FOUND", f"Model '{command.model_id}' not found",
                                                  "model_id"))
            per_model = bool(command.model_id)
            current = self.book.model(command.tenant_id, command.model_id) if per_model \
                else self.book.tenant(command.tenant_id)
            try:
                new = merge(current, command.update, per_model=per_model)
            except InvalidLimits as exc:
                raise ServiceError(400, ErrorBody("VALIDATION_ERROR", str(exc), exc.field)) from None
            if new == current:
                return SetLimitsReply(limits=new), []
            event = LimitsSet(tenant_id=command.tenant_id, model_id=command.model_id, limits=new)
            return SetLimitsReply(limits=new, event=event), [event]

        reply = await self.outbox.record(decided)
        if reply.event is not None:
            log.info("quota.limits_set", tenant=command.tenant_id, model=command.model_id or None)
            self.removed()          # a removal that committed meanwhile voided them: cleared by follow_removals
        return reply

    async def clear_removed(self) -> int:
        """Record a LimitsSet of no limits for each limit in force that a removal voided; return how many."""
        async with self.pool.acquire() as conn:
            await self.removals.catch_up(conn)

        def decided() -> tuple[list[LimitsSet], list[LimitsSet]]:
            voided = [LimitsSet(tenant_id=tenant, model_id=model, limits=NO_LIMITS)
                      for tenant, model, position in self.book.in_force()
                      if self.removals.voided(tenant, model, position)]
            return voided, voided

        cleared = await self.outbox.record(decided)
        for event in cleared:
            log.info("quota.limits_cleared", tenant=event.tenant_id, model=event.model_id or None)
        return len(cleared)

    def removed(self) -> None:
        """A removal was read from the log (the counters' follower tells): `follow_removals` clears what it voided."""
        self._removed.set()

    async def follow_removals(self) -> None:
        """Clear the limits removals voided each time one is read (`removed`), retrying on trouble; until cancelled."""
        backoff = Backoff()
        while True:
            await self._removed.wait()
            self._removed.clear()
            try:
                await self.clear_removed()
                backoff.reset()
            except TRANSIENT as exc:
                log.warning("quota.limits_clear_failed", error=str(exc) or type(exc).__name__,
                            retry_in_s=backoff.next_s)
                self._removed.set()
                await backoff.wait()
