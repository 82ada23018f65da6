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
import socket
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
PIECE = 4_000                                    # rows per read: a few MB, which the socket buffers can hold
RECEIVE_BUFFER = 8 * 1024 * 1024                 # asked of the kernel for the reading connection (it may cap it)


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
    bulk: frozenset[str] = frozenset(),
) -> AsyncIterator[tuple[list[Positioned], Sequence[str]]]:
    """Decoded chunks of the log from position 0 through `upto`, with each event's type (a decoder may
    return a view that does not know its own), read on a connection of their own.

    The rows are read in pieces of PIECE, each asked for as soon as the one before it has arrived, and
    decoded as they come: a piece fits in the connection's socket buffers (RECEIVE_BUFFER), so PostgreSQL
    sends the next one while this process decodes or folds, and neither waits for the other for long.

    Events of the `bulk` types (all read as one type) are for readers that only sum them: only their payloads
    are read, by ranges of positions between the log's other events of `types` (read first, in order), and
    each carries the last position of its range instead of its own.
    """
    decoders = decoders or {}
    async with pool.acquire() as reader:
        _widen_receive_buffer(reader)
        pieces = _bulk_pieces(reader, types, upto, decoders, bulk) if bulk and bulk <= types \
            else _pieces(reader, types, upto, decoders, max(1, min(chunk, PIECE)))
        events: list[Positioned] = []
        kinds: list[str] = []
        async for got, got_kinds in pieces:
            events.extend(got)
            kinds.extend(got_kinds)
            if len(events) >= chunk:
                yield events, (kinds if len(set(kinds)) > 1 else kinds[:1])
                events, kinds = [], []
        if events:
            yield events, (kinds if len(set(kinds)) > 1 else kinds[:1])


async def _pieces(reader: asyncpg.Connection, types: frozenset[str], upto: int, decoders: Decoders,
                  piece: int) -> AsyncIterator[tuple[list[Positioned], list[str]]]:
    """Every event of `types`, in order, a piece at a time, the next piece's query out while this one decodes."""
    pending = asyncio.ensure_future(eventlog.read_rows(reader, 0, types, upto, piece))
    try:
        while True:
            rows = await pending
            if not rows:
                return
            pending = asyncio.ensure_future(eventlog.read_rows(reader, rows[-1][0], types, upto, piece))
            await asyncio.sleep(0)                  # let the next query go out before decoding this piece
            yield _decoded(rows, decoders)
    finally:
        await _settle(pending)


async def _bulk_pieces(reader: asyncpg.Connection, types: frozenset[str], upto: int, decoders: Decoders,
                       bulk: frozenset[str]) -> AsyncIterator[tuple[list[Positioned], list[str]]]:
    """The other events of `types` in order, and between them the `bulk` events by payload, a range at a time."""
    (kind,) = {SUPERSEDED.get(t, t) for t in bulk}
    decode = decoders.get(kind, decode_event)
    others = [] if not types - bulk else await eventlog.read_rows(reader, 0, types - bulk, upto, 2**62)
    stops = [row[0] for row in others]
    ranges = []
    start = 0
    for stop in [*stops, upto + 1]:             # bulk events lie strictly between the other events
        ranges += [(a, min(a + PIECE, stop - 1)) for a in range(start, stop - 1, PIECE)]
        ranges.append(None)                     # here comes the other event at `stop`, if any
        start = stop
    stored = stored_types(bulk)
    other = iter(others)
    spans = iter([span for span in ranges if span is not None])

    def ask() -> asyncio.Future[list[str]] | None:     # the next range's payloads, in the order they are awaited
        span = next(spans, None)
        return None if span is None else asyncio.ensure_future(eventlog.read_payloads(reader, *span, stored))

    pending = ask()
    try:
        for span in ranges:
            if span is None:
                row = next(other, None)
                if row is not None:
                    yield _decoded([row], decoders)
                continue
            assert pending is not None
            payloads = await pending
            pending = ask()
            await asyncio.sleep(0)                  # let the next query go out before decoding this range
            if payloads:
                last = span[1]
                yield [(last, decode(p)) for p in payloads], [kind] * len(payloads)
    finally:
        await _settle(pending)


async def _settle(pending: asyncio.Future[Any] | None) -> None:
    if pending is not None and not pending.done():
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending


def _widen_receive_buffer(conn: asyncpg.Connection) -> None:
    """Let the kernel hold a whole piece of rows for this connection (as far as the system allows)."""
    sock = conn._transport.get_extra_info("socket") if conn._transport is not None else None  # noqa: SLF001
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


async def rebuild(
    pool: asyncpg.Pool, projection: Projection, progress: Progress | None = None, chunk: int = 20_000,
    decoders: Decoders | None = None, bulk: frozenset[str] = frozenset(),
) -> tuple[int, float]:
    """Drop the projection's view and replay it from position 0; return (events, seconds)."""
    return await rebuild_all(pool, [projection], progress, chunk, decoders, bulk)


async def rebuild_all(
    pool: asyncpg.Pool, projections: Sequence[Projection], progress: Progress | None = None,
    chunk: int = 20_000, decoders: Decoders | None = None, bulk: frozenset[str] = frozenset(),
) -> tuple[int, float]:
    """Drop several projections and replay them from position 0 in one pass over the log and one
    transaction; return (events read, seconds). Projections that can fold in memory (`Folding`) write
    once at the end (earlier past FLUSH_ROWS rows); others apply chunk by chunk. `bulk`: event types whose
    order and positions no fold looks at (`replay_log`); read as such when every projection folds in memory."""
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
            bulk = bulk if all(fold is not None for fold in folds) else frozenset()
            async for batch, kinds in replay_log(pool, types, upto, chunk, decoders, bulk):
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


def _decoded(rows: list[asyncpg.Record], decoders: Decoders) -> tuple[list[Positioned], list[str]]:
    """Each row decoded, and its type as the current version names it (an older version is read upcast)."""
    found = {row[1] for row in rows}
    if len(found) == 1:                       # the common case: one decoder, one type for the whole piece
        (only,) = found
        decode = decoders.get(only, decode_event)
        return [(row[0], decode(row[2])) for row in rows], [SUPERSEDED.get(only, only)] * len(rows)
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
