"""The registry's source of truth: registry events in the log, folded into a Catalog, published to JetStream.

Commands run one at a time across every replica (an advisory lock), each
against a catalog first brought up to date from the log. Publishing is an
outbox: events are committed first, then published from the log with their
event id as the JetStream message id, so a crash in between only delays them.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import REGISTRY_EVENT_TYPES, Event, subject_of
from switchyard_gateway.contracts.routing import REGISTRY_EVENT_CLASSES
from switchyard_gateway.contracts.users import EVENT_CLASSES as USER_EVENT_CLASSES
from switchyard_gateway.contracts.messages import Command
from switchyard_gateway.kit import eventlog, projections
from switchyard_gateway.services.registry.decide import decide

log = structlog.get_logger()

REGISTRY_TYPES = REGISTRY_EVENT_TYPES | {cls.__struct_config__.tag  # type: ignore[misc]
                                         for cls in (*REGISTRY_EVENT_CLASSES, *USER_EVENT_CLASSES)}
COMMAND_LOCK = 0x5359_5245_47  # "SYREG"
OUTBOX = "registry.outbox"


class RegistryStore:
    def __init__(self, pool: asyncpg.Pool, nc: NATS) -> None:
        self.pool, self.nc = pool, nc
        self.catalog = Catalog()
        self.changed_at: datetime | None = None
        self.log = eventlog.LogFold(REGISTRY_TYPES, self._apply)
        self._publish_lock = asyncio.Lock()

    async def load(self) -> None:
        """Fold every registry event in the log; republish if the stream lost any."""
        async with self.pool.acquire() as conn:
            await self.log.catch_up(conn)
        await self._repair_stream()
        await self.publish_pending()

    @property
    def position(self) -> int:
        """The last log position the catalog holds."""
        return self.log.position

    async def execute(self, command: Command,
                      password_hash: str | None = None) -> tuple[list[Event], str | None, str | None]:
        """Decide and record a command's events; return them with any new key (shown once)."""
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", COMMAND_LOCK)
                await self.log.catch_up(conn)
                events, key, key_id = decide(self.catalog, command, password_hash)
                appended = await eventlog.append(conn, events)
            for position, event in appended:
                self.log.fold(position, event)
        if appended:
            await self.publish_pending()
        return events, key, key_id

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
        async with self.pool.acquire() as conn:
            await self.log.catch_up(conn)

    def _apply(self, event: Event) -> None:
        self.catalog.apply(event)
        self.changed_at = event.occurred_at

    async def publish_pending(self) -> int:
        """Publish registry events past the outbox checkpoint, in log order."""
        async with self._publish_lock, self.pool.acquire() as conn, conn.transaction():
            after = await projections.lock_checkpoint(conn, OUTBOX)
            js = self.nc.jetstream(timeout=5)
            published = 0
            last = after
            async for batch in eventlog.read_all(conn, after, REGISTRY_TYPES):
                for position, event in batch:
                    await js.publish(subject_of(event), encode(event),
                                     headers={subjects.MSG_ID_HEADER: str(event.event_id)})
                    last = position
                    published += 1
            if last > after:
                await conn.execute(
                    "UPDATE projection_checkpoints SET position = $2, updated_at = now() WHERE projection = $1",
                    OUTBOX, last,
                )
            return published

    async def _repair_stream(self) -> None:
        """If the REGISTRY stream holds fewer events than the log (NATS data lost), republish all."""
        js = self.nc.jetstream(timeout=5)
        info = await js.stream_info(subjects.STREAM_REGISTRY)
        async with self.pool.acquire() as conn:
            in_log = await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1)", list(REGISTRY_TYPES))
            if info.state.messages < in_log:
                log.warning("registry.stream_behind_log", stream=info.state.messages, log=in_log)
                await conn.execute(
                    "UPDATE projection_checkpoints SET position = 0 WHERE projection = $1", OUTBOX
                )
