"""`switchyard replay`: drop usage projections and rebuild them from position 0 of the event log."""

from __future__ import annotations

import sys
from pathlib import Path

from switchyard_gateway.events import ProgressBar, checkpoints, rebuild_all
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.services.metering.folds import BULK
from switchyard_gateway.services.metering.projections import DECODERS, PROJECTIONS

CHUNK = 50_000          # events per read; the next read runs while this chunk is folded


async def run(names: list[str], data_dir: Path, list_only: bool = False) -> int:
    pool = await eventlog.create_pool(running_url(data_dir, "database_url"), timeout_s=10)
    try:
        async with pool.acquire() as conn:
            await eventlog.migrate(conn)
            if list_only:
                positions = await checkpoints(conn)
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
        count, seconds = await rebuild_all(pool, [PROJECTIONS[n] for n in names], progress=ProgressBar(label),
                                           chunk=CHUNK, decoders=DECODERS, bulk=BULK)
        sys.stderr.write("\n")
        print(f"{', '.join(names)}: rebuilt from {count:,} events in {seconds:.2f} s "
              f"({count / max(seconds, 1e-9):,.0f} events/s)")
        return 0
    finally:
        await pool.close()
