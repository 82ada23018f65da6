"""`switchyard replay`: drop a usage projection and rebuild it from position 0 of the event log."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from switchyard_gateway.kit import eventlog, projections
from switchyard_gateway.services.metering.projections import DECODERS, PROJECTIONS

CHUNK = 50_000          # events per read; the next read runs while this chunk is folded


def database_url(data_dir: Path) -> str:
    """SWITCHYARD_DATABASE_URL, else the database of the stack `switchyard up --data-dir D` runs."""
    url = os.environ.get("SWITCHYARD_DATABASE_URL")
    if url:
        return url
    state = data_dir / "stack.json"
    if not state.exists():
        raise SystemExit(f"switchyard: no SWITCHYARD_DATABASE_URL and no stack at {data_dir} "
                         "(run `switchyard up --data-dir D` first, or pass the same --data-dir)")
    return json.loads(state.read_text())["urls"]["database_url"]


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
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        sys.stderr.write(f"\r{self.name:<16} [{'#' * filled}{'.' * (self.width - filled)}] "
                         f"{done:>10,}/{total:<10,} {fraction:6.1%} {rate:>10,.0f} events/s")
        sys.stderr.flush()


async def run(names: list[str], data_dir: Path, list_only: bool = False) -> int:
    pool = await eventlog.create_pool(database_url(data_dir), timeout_s=10)
    try:
        async with pool.acquire() as conn:
            await eventlog.migrate(conn)
            if list_only:
                positions = await projections.checkpoints(conn)
                head = await eventlog.head(conn)
                for name in sorted(PROJECTIONS):
                    print(f"{name:<20} position {positions.get(name, 0):>12,} of {head:,}")
                return 0
        unknown = [n for n in names if n not in PROJECTIONS]
        if unknown:
            print(f"switchyard: unknown projection {', '.join(unknown)}; known: {', '.join(sorted(PROJECTIONS))}",
                  file=sys.stderr)
            return 2
        # All named projections in one pass over the log and one transaction.
        label = names[0] if len(names) == 1 else f"{len(names)} projections"
        bar = ProgressBar(label)
        count, seconds = await projections.rebuild_all(
            pool, [PROJECTIONS[n] for n in names], progress=bar, chunk=CHUNK, decoders=DECODERS)
        sys.stderr.write("\n")
        print(f"{', '.join(names)}: rebuilt from {count:,} events in {seconds:.2f} s "
              f"({count / max(seconds, 1e-9):,.0f} events/s)")
        return 0
    finally:
        await pool.close()
