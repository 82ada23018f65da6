"""The gateway's event-fed copy of the registry: a Catalog kept current from the REGISTRY stream.

No request waits on NATS for auth or routing: the catalog is read in memory.
`switchyard_gateway.events.StreamFold` replays the stream from its start, then follows it.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.events import StreamFold

log = structlog.get_logger()


class LocalState:
    def __init__(self) -> None:
        self.catalog = Catalog()
        self.feed = StreamFold(subjects.STREAM_REGISTRY, self.catalog.apply)

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Replay the REGISTRY stream and wait until caught up to its current end."""
        await self.feed.start(nc, timeout_s)
        log.info("catalog.loaded", version=self.catalog.version, tenants=len(self.catalog.tenants),
                 endpoints=len(self.catalog.endpoints), models=len(self.catalog.models))

    async def wait_for(self, event_ids: Iterable[str], timeout_s: float = 5.0) -> bool:
        """Wait until events an admin command just recorded are folded in (read-your-writes)."""
        return await self.feed.wait_for(event_ids, timeout_s)

    async def caught_up(self, nc: NATS, timeout_s: float = 1.0) -> bool:
        """Whether the catalog holds every registry event recorded until now: the REGISTRY stream's end, asked of
        NATS, folded in (waited for up to `timeout_s`). False when that cannot be known."""
        try:
            info = await nc.jetstream(timeout=timeout_s).stream_info(subjects.STREAM_REGISTRY)
        except Exception as exc:  # noqa: BLE001 — NATS away or slow: not known, and not to be assumed
            log.info("catalog.end_unknown", error=str(exc) or type(exc).__name__)
            return False
        return await self.feed.sequence.reach(info.state.last_seq, timeout_s)
