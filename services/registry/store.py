"""The registry's source of truth: registry events in the log, folded into a Catalog, published to REGISTRY.

Commands run one at a time across every replica (an advisory lock), each against a catalog first
brought up to date from the log; their events are appended, then published from the log with their
event id as the JetStream message id (`switchyard_gateway.events.Outbox`), so a crash in between
only delays them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import REGISTRY_EVENT_TYPES, Event
from switchyard_gateway.contracts.messages import Command, ErrorBody, ImportConfig, ImportSummary, KindCounts
from switchyard_gateway.contracts.routing import REGISTRY_EVENT_CLASSES
from switchyard_gateway.contracts.users import EVENT_CLASSES as USER_EVENT_CLASSES
from switchyard_gateway.events import Outbox
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry.decide import decide, import_config

REGISTRY_TYPES = REGISTRY_EVENT_TYPES | {cls.__struct_config__.tag  # type: ignore[misc]
                                         for cls in (*REGISTRY_EVENT_CLASSES, *USER_EVENT_CLASSES)}
COMMAND_LOCK = 0x5359_5245_47  # "SYREG"
OUTBOX = "registry.outbox"
# what an import's event costs to append and publish, taken high (measured: 0.3-0.5 ms on a laptop, no fsync), and
# what is kept besides, when an import is weighed against the time its sender waits
SECONDS_PER_EVENT = 0.002
DEADLINE_MARGIN_S = 1.0


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        self.pool = pool
        self.catalog = Catalog()
        self.changed_at: datetime | None = None
        self.outbox = Outbox(pool, nc, name=OUTBOX, stream=subjects.STREAM_REGISTRY, types=REGISTRY_TYPES,
                             apply=self._apply, lock=COMMAND_LOCK)

    async def load(self) -> None:
        """Fold every registry event in the log; republish if the stream lost any, publish what is pending."""
        await self.outbox.start()

    @property
    def position(self) -> int:
        """The last log position the catalog holds."""
        return self.outbox.fold.position.value

    async def execute(self, command: Command,
                      password_hash: str | None = None) -> tuple[list[Event], str | None, str | None]:
        """Decide and record a command's events; return them with any new key (shown once)."""

        def decided() -> tuple[tuple[list[Event], str | None, str | None], list[Event]]:
            events, key, key_id = decide(self.catalog, command, password_hash)
            return (events, key, key_id), events

        return await self.outbox.record(decided)

    async def import_document(self, command: ImportConfig) -> tuple[ImportSummary, list[Event]]:
        """Apply a registry document whole, or refuse it whole; answer counts per kind, and the events.

        Refused (503, nothing recorded) when, decided, its events could not be recorded and published before its
        asker stops waiting (`natsio.asker_deadline`, at `SECONDS_PER_EVENT` each and `DEADLINE_MARGIN_S`): a
        change recorded after its asker was told the registry did not answer is one it would import again in
        the belief that it failed."""
        counts: dict[str, KindCounts] = {}

        def decided() -> tuple[list[Event], list[Event]]:
            events = import_config(self.catalog, command, counts)
            deadline = natsio.asker_deadline()
            needed_s = len(events) * SECONDS_PER_EVENT + DEADLINE_MARGIN_S
            if events and deadline is not None and time.time() + needed_s > deadline:
                raise ServiceError(503, ErrorBody("IMPORT_TOO_SLOW", (
                    f"nothing was recorded: the document's {len(events):,} changes would take about "
                    f"{needed_s:.0f} s to record, longer than its sender waits ({max(deadline - time.time(), 0):.0f} "
                    "s left); import it in smaller parts (each part is applied whole)")))
            return events, events

        events = await self.outbox.record(decided)
        return ImportSummary(kinds=counts, events=len(events),
                             last_event_id=str(events[-1].event_id) if events else None), events

    async def ping(self, timeout_s: float = 2.0) -> dict[str, object]:
        """Whether PostgreSQL answers a query now, and how fast (never raises)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s), self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 — a status report, not a failure
            return {"status": "error", "detail": str(exc) or type(exc).__name__}
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 3)}

    async def refresh(self) -> None:
        """Fold what other replicas recorded since (no lock: reads only)."""
        await self.outbox.catch_up()

    def _apply(self, event: Event) -> None:
        self.catalog.apply(event)
        self.changed_at = event.occurred_at
