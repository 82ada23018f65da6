"""Leader election among router replicas: a lease on one key of a NATS KV bucket whose entries expire.

The holder renews the key every third of the TTL with a compare-and-set on its
last revision; anyone else tries to create it. A holder that cannot renew (NATS
gone, lost a race) stops leading at once, and its own clock ends its lease at
80% of the TTL even if it hears nothing, before the bucket lets another replica
in. A replica that stops cleanly deletes the key so the next one takes over at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from switchyard_gateway.contracts import subjects

log = structlog.get_logger()

BUCKET = subjects.KV_ROUTER_LEADER      # JetStream stream KV_router_leader
KEY = "leader"
Hook = Callable[[], Awaitable[None]]


class Lease:
    def __init__(self, nc: NATS, holder: str, ttl_s: float = 5.0, replicas: int = 1) -> None:
        self.nc, self.holder, self.ttl_s, self.replicas = nc, holder, ttl_s, replicas
        self.kv: KeyValue | None = None
        self.revision: int | None = None
        self.until = 0.0                      # monotonic end of our lease
        self.hook: asyncio.Future[None] | None = None   # the gain or loss hook running now, if any

    @property
    def held(self) -> bool:
        return self.revision is not None and time.monotonic() < self.until

    async def open(self) -> None:
        js = self.nc.jetstream(timeout=5)
        try:
            self.kv = await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            self.kv = await js.create_key_value(KeyValueConfig(
                bucket=BUCKET, history=1, ttl=self.ttl_s, storage=StorageType.FILE, replicas=self.replicas))

    async def run(self, on_gain: Hook, on_loss: Hook) -> None:
        """Hold or chase the lease until cancelled; call the hooks as leadership comes and goes."""
        while True:
            leading = self.held
            await self._attempt()
            if self.held and not leading:
                log.info("router.leader_gained", holder=self.holder)
                await self._run_hook(on_gain)
            elif leading and not self.held:
                log.warning("router.leader_lost", holder=self.holder)
                await self._run_hook(on_loss)
            await asyncio.sleep(self.ttl_s / 3 if self.held else self.ttl_s / 5)

    async def _run_hook(self, hook: Hook) -> None:
        """Run a hook shielded from cancellation: a NATS call cut midway (a flush awaiting its PONG) breaks
        nats-py's connection. Whoever cancels `run` awaits `self.hook` before closing anything."""
        self.hook = asyncio.ensure_future(hook())
        await asyncio.shield(self.hook)

    async def _attempt(self) -> None:
        assert self.kv is not None
        started = time.monotonic()
        try:
            if self.revision is not None and started < self.until:
                self.revision = await self.kv.update(KEY, self.holder.encode(), last=self.revision)
            else:
                self.revision = None
                self.revision = await self.kv.create(KEY, self.holder.encode())
            self.until = started + self.ttl_s * 0.8
        except nats.js.errors.KeyValueError:
            self.revision = None                              # someone else holds it (or just let it go)
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
            log.warning("router.lease_unreachable", error=str(exc) or type(exc).__name__)
            self.revision = None

    async def release(self) -> None:
        """Give the lease up so another replica takes over without waiting for it to expire."""
        revision, self.revision = self.revision, None
        if revision is None or self.kv is None:
            return
        try:
            await self.kv.delete(KEY, last=revision)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
            pass

    async def current(self) -> str | None:
        """Who holds the lease now, as the bucket says."""
        assert self.kv is not None
        try:
            entry = await self.kv.get(KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        return entry.value.decode() if entry.value else None
