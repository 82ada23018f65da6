"""The counters in Valkey as a projection of the event log, with their checkpoint beside them.

`Counters` is the projection's `Target`: it folds registry and limits events (prices, model names,
time zones) and usage events in log order, and applies each batch with one script that settles the
holds of the calls it contains, adds their actual tokens, requests and cost, and moves the checkpoint,
all at once and only if the checkpoint is still where the batch starts (so replicas never apply a
batch twice). `events.LogFollower` drives it by push; `ValkeyLead` lets one quota replica at a time
follow; a batch holding a tenant's or a model's removal is told to `on_removal` (the limits store then clears
the limits it voided), whether or not it gets applied; a tenant's removal also ends its counters, rate windows
and holds in the batch's script, so a tenant created again under its id counts from nothing, and a model's ends
every tenant's fields of it (and the holds' entries for them), so a model registered again counts from nothing.
`rebuild` (what `switchyard replay quota` runs) recomputes every counter from position 0 and swaps them in
atomically, keeping the reservations still in flight.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from switchyard_gateway.contracts.events import ModelRemoved, TenantRemoved
from switchyard_gateway.events import Busy
from switchyard_gateway.events.rebuild import Progress, count_upto, replay_log
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.eventlog import Positioned
from switchyard_gateway.quotas.ledger import (
    LEDGER_TYPES, PROJECTION_TYPES, CounterKey, Ledger, Settlement, model_suffix,
)
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.quotas.scripts import APPLY_SCRIPT, LEAD_SCRIPT, REBUILD_SCRIPT
from switchyard_gateway.resp import Valkey

LEASE_MS = 5000          # a replica leads the projection while it renews this lease (at least every second)
REBUILD_LOCK_S = 600     # a rebuild holds the counters at most this long


class RebuildRunning(Exception):
    """Another `switchyard replay quota` is running."""


async def checkpoint(valkey: Valkey, keys: Keys) -> int:
    """The log position the counters hold."""
    return int(await valkey.call("GET", keys.checkpoint) or 0)


async def load_ledger(conn: asyncpg.Connection, keys: Keys, upto: int) -> Ledger:
    """The ledger (prices, names, zones) as of a log position."""
    ledger = Ledger(keys)
    async for batch in eventlog.read_all(conn, 0, LEDGER_TYPES, upto=upto):
        for _, event in batch:
            ledger.apply(event)
    return ledger


def apply_args(start: int, end: int, settled: list[Settlement], totals: dict[CounterKey, list[int]],
               ended: Sequence[str] = (), ended_keys: Sequence[str] = (), model_suffixes: Sequence[str] = (),
               model_keys: Sequence[str] = ()) -> list[Any]:
    args: list[Any] = [start, end, len(settled)]
    for s in settled:
        args += (s.hold, s.tokens, s.requests, s.nanos)
    args += (len(ended), *ended, len(ended_keys), *ended_keys)
    args += (len(model_suffixes), *model_suffixes, len(model_keys), *model_keys)
    for (key, name), (value, expire) in totals.items():
        args += (key, name, value, expire)
    return args


class Counters:
    """The quota counters as a projection target: checkpoint and counters in Valkey, moved by one script."""

    event_types = PROJECTION_TYPES

    def __init__(self, pool: asyncpg.Pool, valkey: Valkey, keys: Keys,
                 on_removal: Callable[[], object] | None = None) -> None:
        self.pool, self.valkey, self.keys = pool, valkey, keys
        self.on_removal = on_removal
        self.ledger = Ledger(keys)
        self._ledger_at = -1          # the log position the ledger is folded through (-1: to be loaded)

    async def checkpoint(self) -> int:
        return await checkpoint(self.valkey, self.keys)

    async def apply(self, after: int, batch: Sequence[Positioned]) -> bool:
        if self.on_removal is not None and any(isinstance(e, TenantRemoved | ModelRemoved) for _, e in batch):
            self.on_removal()          # before the script: told even if a rebuild or another replica takes it
        if self._ledger_at != after:
            async with self.pool.acquire() as conn:
                self.ledger = await load_ledger(conn, self.keys, after)
            self._ledger_at = after
        totals: dict[CounterKey, list[int]] = {}
        removed: set[str] = set()
        removed_models: set[str] = set()
        settled = self.ledger.fold([event for _, event in batch], totals, removed, removed_models)
        end = batch[-1][0]
        self._ledger_at = -1          # folded past `after`: valid again only once the script agrees
        ended = [prefix for tenant in sorted(removed) for prefix in self.keys.tenant_prefixes(tenant)]
        ended_keys = [key for prefix in ended async for key in self.valkey.scan(glob_escape(prefix) + "*")]
        suffixes = [model_suffix(model) for model in sorted(removed_models)]
        model_keys = [key for prefix in self.keys.counter_prefixes() if suffixes
                      async for key in self.valkey.scan(glob_escape(prefix) + "*")]
        keys = (self.keys.checkpoint, self.keys.rebuilding, self.keys.holds, self.keys.hold_data)
        done, _at = await APPLY_SCRIPT.run(self.valkey, keys, apply_args(after, end, settled, totals, ended,
                                                                         ended_keys, suffixes, model_keys))
        if done == 2:
            raise Busy("a rebuild of the quota counters is running")
        if done == 1:
            self._ledger_at = end
        return done == 1              # 0: another replica (or a rebuild) moved the checkpoint


def glob_escape(text: str) -> str:
    """`text` matched literally by a SCAN pattern."""
    return "".join("\\" + c if c in "\\*?[]^" else c for c in text)


class ValkeyLead:
    """The lead of the counter projection: a lease in Valkey, taken when free, renewed by its holder."""

    def __init__(self, valkey: Valkey, key: str, token: str | None = None, lease_ms: int = LEASE_MS) -> None:
        self.valkey, self.key, self.lease_ms = valkey, key, lease_ms
        self.token = token or uuid.uuid4().hex

    async def hold(self) -> float:
        left_ms = await LEAD_SCRIPT.run(self.valkey, [self.key], [self.token, self.lease_ms])
        return left_ms / 1000


async def rebuild(pool: asyncpg.Pool, valkey: Valkey, keys: Keys, progress: Progress | None = None,
                  chunk: int = 20_000) -> tuple[int, float]:
    """Recompute every counter from position 0 of the log and swap them in; return (events, seconds)."""
    started = time.perf_counter()
    token = uuid.uuid4().hex
    if await valkey.call("SET", keys.rebuilding, token, "NX", "EX", REBUILD_LOCK_S) is None:
        raise RebuildRunning("another quota rebuild is running")
    try:
        async with pool.acquire() as conn:
            upto = await eventlog.head(conn)
            total = await count_upto(conn, PROJECTION_TYPES, upto)
        in_flight = {hold.decode() for hold in await valkey.call("HKEYS", keys.hold_data)}
        ledger, totals, settled_holds, applied = Ledger(keys), {}, [], 0
        if progress:
            progress(0, total)
        async for batch, _ in replay_log(pool, PROJECTION_TYPES, upto, chunk):
            for settlement in ledger.fold([event for _, event in batch], totals):
                if settlement.hold in in_flight:
                    settled_holds.append(settlement.hold)
            applied += len(batch)
            if progress:
                progress(applied, total)
        now = int(time.time())
        old = [key async for key in valkey.scan(keys.counters_pattern)]
        args: list[Any] = [token, upto, len(old), *old, len(settled_holds), *settled_holds]
        for (key, name), (value, expire) in totals.items():
            if expire > now:
                args += (key, name, value, expire)
        swapped = await REBUILD_SCRIPT.run(valkey, (keys.checkpoint, keys.rebuilding, keys.holds, keys.hold_data), args)
        if not swapped:
            raise RebuildRunning("the rebuild lost its lock (it ran longer than 10 minutes)")
        await _announce(pool)
        return applied, time.perf_counter() - started
    finally:
        if await valkey.call("GET", keys.rebuilding) == token.encode():
            await valkey.call("DEL", keys.rebuilding)


async def _announce(pool: asyncpg.Pool) -> None:
    """Wake the live followers (a rebuild paused them): the same NOTIFY an append sends."""
    from switchyard_gateway.events.notices import CHANNEL

    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
