"""Benchmark replay: rebuild every usage projection from an event log of N usage events.

    python -m benchmarks.replay [--events 1000000] [--rounds 2]

Starts PostgreSQL (EmbeddedStack, fresh data dir, no fsync), fills the log with N gateway-like usage
events spread over one hour (benchmarks/ingest.py's mix: 50 tenants, 3 models, 4 endpoints) plus the
registry's price events, then runs what `switchyard replay --all` runs (`rebuild_all` with the narrow
usage decoder) `--rounds` times and reports events/s. Each rebuild must equal the first.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from benchmarks.ingest import MODELS, usage_events
from switchyard_gateway.contracts.events import ModelRegistered
from switchyard_gateway import events
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.services.metering.folds import BULK
from switchyard_gateway.services.metering.projections import DECODERS, PROJECTIONS

TABLES = ("token_counts", "tenant_token_counts", "usage_minutes", "usage_days", "usage_cost")


async def fill(pool: asyncpg.Pool, n: int) -> float:
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction():
        await eventlog.append(conn, [ModelRegistered(model_id=m, input_price_per_1m=0.05 * (i + 1),
                                                     output_price_per_1m=0.1 * (i + 1)) for i, m in enumerate(MODELS)])
    events = usage_events(n, datetime.now(UTC) - timedelta(hours=2), 3600.0)
    batch = []
    for event in events:
        batch.append(event)
        if len(batch) == 20_000:
            async with pool.acquire() as conn, conn.transaction():
                await eventlog.append(conn, batch)
            batch = []
    if batch:
        async with pool.acquire() as conn, conn.transaction():
            await eventlog.append(conn, batch)
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - started


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[tuple]]:
    async with pool.acquire() as conn:
        return {t: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")), key=repr) for t in TABLES}


async def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="switchyard-replay-"))
    root.chmod(0o755)
    stack = EmbeddedStack(root / "stack", durable=False)
    urls = stack.start()
    pool = await eventlog.create_pool(urls.database_url)
    try:
        async with pool.acquire() as conn:
            await eventlog.migrate(conn)
        say(f"filling the log with {args.events:,} usage events ...")
        say(f"filled in {await fill(pool, args.events):.1f} s")
        first = None
        for round_ in range(1, args.rounds + 1):
            count, seconds = await events.rebuild_all(pool, list(PROJECTIONS.values()), chunk=args.chunk,
                                                           decoders=DECODERS, bulk=BULK)
            view = await snapshot(pool)
            first = first or view
            say(f"round {round_}: rebuilt {', '.join(PROJECTIONS)} from {count:,} events in {seconds:.2f} s "
                f"({count / seconds:,.0f} events/s); equal to round 1: {view == first}")
            if view != first:
                return 1
        return 0
    finally:
        await pool.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)      # a million events take gigabytes


def say(text: str) -> None:
    print(f"replay: {text}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="usage events in the log (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="rebuilds to run (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=50_000, help="events per read (default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(None))))
