"""The counters in Valkey as a projection of the event log, with their checkpoint beside them.

The live runner (one quota replica at a time holds the lead) reads the log past the
checkpoint Valkey holds and applies each batch with one script that settles the holds
of the usage it contains, adds the actual counts and moves the checkpoint, all at once;
if the checkpoint moved meanwhile (a rebuild) the script refuses and the runner reloads. `rebuild` (what
`switchyard replay quota` runs) recomputes every counter from position 0 and swaps
them in atomically, keeping the reservations still in flight.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisError
import structlog

from switchyard_gateway.contracts.codec import stored_types
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.eventlog import Positioned
from switchyard_gateway.quotas.ledger import LEDGER_TYPES, PROJECTION_TYPES, CounterKey, Ledger, Settlement
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.quotas.scripts import APPLY_SCRIPT, LEAD_SCRIPT, REBUILD_SCRIPT, Script

log = structlog.get_logger()
Progress = Callable[[int, int], None]
LEASE_MS = 5000          # a replica leads the projection while it renews this lease,
RENEW_S = 1.0            # this often


class RebuildRunning(Exception):
    """Another `switchyard replay quota` is running."""


async def run_script(client: redis.Redis, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """EVALSHA, loading the script on a NOSCRIPT reply."""
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        pass
    return await client.eval(script.source, len(keys), *keys, *args)


async def checkpoint(client: redis.Redis, keys: Keys) -> int:
    return int(await client.get(keys.checkpoint) or 0)


async def load_ledger(conn: asyncpg.Connection, keys: Keys, upto: int) -> Ledger:
    """The ledger (prices, names, zones) as of a log position."""
    ledger = Ledger(keys)
    async for batch in eventlog.read_all(conn, 0, LEDGER_TYPES, upto=upto):
        for _, event in batch:
            ledger.apply(event)
    return ledger


def apply_args(start: int, end: int, settled: list[Settlement], totals: dict[CounterKey, list[int]]) -> list[Any]:
    args: list[Any] = [start, end, len(settled)]
    for s in settled:
        args += (s.request_id, s.tokens, s.requests, s.nanos)
    for (key, name), (value, expire) in totals.items():
        args += (key, name, value, expire)
    return args


class CounterProjection:
    """Follows the log into the Valkey counters; one per quota replica, the checkpoint keeps them apart."""

    def __init__(self, pool: asyncpg.Pool, client: redis.Redis, keys: Keys, batch: int = 2000,
                 poll_s: float = 0.025) -> None:
        self.pool, self.client, self.keys = pool, client, keys
        self.batch, self.poll_s = batch, poll_s
        self.position = -1
        self.ledger = Ledger(keys)
        self.applied = 0

    async def _reload(self) -> None:
        self.position = await checkpoint(self.client, self.keys)
        async with self.pool.acquire() as conn:
            self.ledger = await load_ledger(conn, self.keys, self.position)

    async def step(self) -> int:
        """Apply the next batch of the log; return how many events it held (0: nothing new, or paused)."""
        if self.position < 0:
            await self._reload()
        async with self.pool.acquire() as conn:
            batch = await eventlog.read(conn, self.position, self.batch, PROJECTION_TYPES)
        if not batch:
            return 0
        return await self.apply(batch)

    async def apply(self, batch: Sequence[Positioned]) -> int:
        totals: dict[CounterKey, list[int]] = {}
        settled = self.ledger.fold([event for _, event in batch], totals)
        end = batch[-1][0]
        keys = (self.keys.checkpoint, self.keys.rebuilding, self.keys.holds, self.keys.hold_data)
        done, at = await run_script(self.client, APPLY_SCRIPT, keys, apply_args(self.position, end, settled, totals))
        if done == 1:
            self.position = end
            self.applied += len(batch)
            return len(batch)
        # 0: another replica (or a rebuild) moved the checkpoint; 2: a rebuild is running. Start over from Valkey.
        self.position = -1
        return 0

    async def lead(self, token: str) -> bool:
        """Whether this replica runs the projection: one at a time, the others stand by."""
        return bool(await run_script(self.client, LEAD_SCRIPT, [self.keys.leader], [token, LEASE_MS]))

    async def run(self) -> None:
        """Follow the log until cancelled, while leading; database or Valkey trouble is retried with backoff."""
        backoff_s = 0.2
        token, renewed = uuid.uuid4().hex, 0.0
        while True:
            try:
                if time.monotonic() - renewed > RENEW_S:
                    if not await self.lead(token):
                        self.position = -1
                        await asyncio.sleep(RENEW_S)
                        continue
                    renewed = time.monotonic()
                applied = await self.step()
                backoff_s = 0.2
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError,
                    asyncio.TimeoutError) as exc:
                log.warning("quota.projection_failed", error=str(exc) or type(exc).__name__)
                self.position = -1
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            if applied < self.batch:
                await asyncio.sleep(self.poll_s)


async def rebuild(pool: asyncpg.Pool, client: redis.Redis, keys: Keys, progress: Progress | None = None,
                  chunk: int = 20_000) -> tuple[int, float]:
    """Recompute every counter from position 0 of the log and swap them in; return (events, seconds)."""
    started = time.perf_counter()
    token = uuid.uuid4().hex
    if not await client.set(keys.rebuilding, token, nx=True, ex=600):
        raise RebuildRunning("another quota rebuild is running")
    try:
        async with pool.acquire() as conn:
            upto = await eventlog.head(conn)
            in_flight = {rid.decode() for rid in await client.hkeys(keys.hold_data)}
            total = await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1) AND position <= $2",
                                        stored_types(PROJECTION_TYPES), upto)
            ledger, totals, settled_holds, applied = Ledger(keys), {}, [], 0
            if progress:
                progress(0, total)
            async for batch in eventlog.read_all(conn, 0, PROJECTION_TYPES, chunk, upto):
                for settlement in ledger.fold([event for _, event in batch], totals):
                    if settlement.request_id in in_flight:
                        settled_holds.append(settlement.request_id)
                applied += len(batch)
                if progress:
                    progress(applied, total)
        now = int(time.time())
        old = [key async for key in client.scan_iter(match=keys.counters_pattern, count=1000)]
        args: list[Any] = [token, upto, len(old), *old, len(settled_holds), *settled_holds]
        for (key, name), (value, expire) in totals.items():
            if expire > now:
                args += (key, name, value, expire)
        swapped = await run_script(client, REBUILD_SCRIPT,
                                   (keys.checkpoint, keys.rebuilding, keys.holds, keys.hold_data), args)
        if not swapped:
            raise RebuildRunning("the rebuild lost its lock (it ran longer than 10 minutes)")
        return applied, time.perf_counter() - started
    finally:
        if await client.get(keys.rebuilding) == token.encode():
            await client.delete(keys.rebuilding)
