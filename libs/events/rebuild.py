"""Rebuild from position 0: read the whole log once, fold it, and swap the result in for the live view.

`replay_log` yields the log's decoded chunks up to a position, the next chunk's query running while
the caller folds; `rebuild_all` uses it to empty PostgreSQL projections and fill them again in one
transaction (the live ingest waits on the checkpoint row locks meanwhile); the quota counters' rebuild
uses it the same way. `ProgressBar` draws what `switchyard replay` shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import asyncpg

from switchyard_gateway.contracts.codec import SUPERSEDED, decode_event, stored_types
from switchyard_gateway.events.project import Projection, lock_checkpoint, set_checkpoint
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.eventlog import Positioned

Progress = Callable[[int, int], None]            # (events applied so far, events to apply)
Decoders = Mapping[str, Callable[[Any], Any]]    # event type -> payload decoder (a rebuild may read a narrow view)
FLUSH_ROWS = 500_000                             # a rebuild writes a projection's folded rows early past this many


class Fold(Protocol):
    """An in-memory accumulator of one projection's changes, written in one go."""

    def add(self, batch: Sequence[Positioned]) -> None: ...

    def size(self) -> int:
        """Rows the next write would touch (a rebuild writes early when this grows large)."""

    async def write(self, conn: asyncpg.Connection, fresh: bool) -> None:
        """Write the changes folded since the last write. `fresh`: the tables are empty and nothing has
        been written since they were emptied, so rows may be copied in rather than merged."""


@runtime_checkable
class Folding(Protocol):
    """A projection that can fold many batches in memory before writing (the rebuild's fast path)."""

    async def open(self, conn: asyncpg.Connection) -> Fold: ...


async def count_upto(conn: asyncpg.Connection, types: frozenset[str], upto: int) -> int:
    """How many events of these types the log holds up to a position: what a progress bar counts to."""
    return await conn.fetchval("SELECT count(*) FROM events WHERE type = ANY($1) AND position <= $2",
                               stored_types(types), upto)


async def replay_log(
    pool: asyncpg.Pool, types: frozenset[str], upto: int, chunk: int = 20_000, decoders: Decoders | None = None,
) -> AsyncIterator[tuple[list[Positioned], Sequence[str]]]:
    """Decoded chunks of the log from position 0 through `upto`, with each event's type (a decoder may
    return a view that does not know its own), read on a connection of their own one chunk ahead."""
    decoders = decoders or {}
    async with pool.acquire() as reader:
        after = 0
        pending = asyncio.ensure_future(eventlog.read_rows(reader, after, types, upto, chunk))
        try:
            while True:
                rows = await pending
                if not rows:
                    return
                after = rows[-1][0]
                pending = asyncio.ensure_future(eventlog.read_rows(reader, after, types, upto, chunk))
                await asyncio.sleep(0)          # let the next query go out before decoding this chunk
                yield _decode_rows(rows, decoders)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending


async def rebuild(
    pool: asyncpg.Pool, projection: Projection, progress: Progress | None = None, chunk: int = 20_000,
    decoders: Decoders | None = None,
) -> tuple[int, float]:
    """Drop the projection's view and replay it from position 0; return (events, seconds)."""
    return await rebuild_all(pool, [projection], progress, chunk, decoders)


async def rebuild_all(
    pool: asyncpg.Pool, projections: Sequence[Projection], progress: Progress | None = None,
    chunk: int = 20_000, decoders: Decoders | None = None,
) -> tuple[int, float]:
    """Drop several projections and replay them from position 0 in one pass over the log and one
    transaction; return (events read, seconds). Projections that can fold in memory (`Folding`) write
    once at the end (earlier past FLUSH_ROWS rows); others apply chunk by chunk."""
    started = time.perf_counter()
    applied = 0
    types = frozenset().union(*(p.event_types for p in projections))
    async with pool.acquire() as conn, conn.transaction():
        for projection in projections:
            await lock_checkpoint(conn, projection.name)
        upto = await eventlog.head(conn)
        total = await count_upto(conn, types, upto)
        for projection in projections:
            for table in projection.tables:
                await conn.execute(f"TRUNCATE {table}")
        folds = [await p.open(conn) if isinstance(p, Folding) else None for p in projections]
        fresh = [True] * len(projections)
        if progress:
            progress(0, total)
        with gc_paused():
            async for batch, kinds in replay_log(pool, types, upto, chunk, decoders):
                present = set(kinds)
                for i, projection in enumerate(projections):
                    if present <= projection.event_types:
                        mine = batch
                    elif present & projection.event_types:      # a mixed chunk: `kinds` has one type per event
                        mine = [pair for pair, kind in zip(batch, kinds) if kind in projection.event_types]
                    else:
                        continue
                    fold = folds[i]
                    if fold is None:
                        await projection.apply(conn, mine)
                        continue
                    fold.add(mine)
                    if fold.size() >= FLUSH_ROWS:
                        await fold.write(conn, fresh[i])
                        fresh[i] = False
                applied += len(batch)
                if progress:
                    progress(applied, total)
        for i, fold in enumerate(folds):
            if fold is not None:
                await fold.write(conn, fresh[i])
        for projection in projections:
            await set_checkpoint(conn, projection.name, upto)
    return applied, time.perf_counter() - started


def _decode_rows(rows: list[asyncpg.Record], decoders: Decoders) -> tuple[list[Positioned], Sequence[str]]:
    """Each row decoded, and its type as the current version names it (an older version is read upcast)."""
    kinds = {row[1] for row in rows}
    if len(kinds) == 1:                       # the common case: one decoder, one type for the whole chunk
        (only,) = kinds
        decode = decoders.get(only, decode_event)
        return [(row[0], decode(row[2])) for row in rows], (SUPERSEDED.get(only, only),)
    return ([(row[0], decoders.get(row[1], decode_event)(row[2])) for row in rows],
            [SUPERSEDED.get(row[1], row[1]) for row in rows])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """A rebuild allocates millions of short-lived objects and no cycles: skip the cyclic collector meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ProgressBar:
    """A one-line progress bar on stderr: done/total, percent, events/s (redrawn at most 10 times a second)."""

    def __init__(self, name: str, width: int = 30) -> None:
        self.name, self.width = name, width
        self.started = time.perf_counter()
        self.drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self.width)
        rate = done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.name:<16} [{'#' * filled}{'.' * (self.width - filled)}] "
                         f"{done:>10,}/{total:<10,} {fraction:6.1%} {rate:>10,.0f} events/s")
        sys.stderr.flush()
