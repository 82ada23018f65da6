"""`switchyard replay quota`: rebuild every quota counter in Valkey from position 0 of the event log."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import redis.asyncio as redis

from switchyard_gateway.kit import eventlog
from switchyard_gateway.services.quota.settings import Settings
from switchyard_gateway.quotas.periods import Keys, key_prefix
from switchyard_gateway.services.quota.projection import RebuildRunning, checkpoint, rebuild

NAME = "quota"


def stack_url(data_dir: Path, name: str) -> str:
    """SWITCHYARD_<NAME> from the environment, else the URL of the stack `switchyard up --data-dir D` runs."""
    url = os.environ.get(f"SWITCHYARD_{name.upper()}")
    if url:
        return url
    state = data_dir / "stack.json"
    if not state.exists():
        raise SystemExit(f"switchyard: no SWITCHYARD_{name.upper()} and no stack at {data_dir} "
                         "(run `switchyard up --data-dir D` first, or pass the same --data-dir)")
    return json.loads(state.read_text())["urls"][name]


def progress_bar(width: int = 30):  # noqa: ANN201 — a callable (done, total) -> None
    started = time.perf_counter()

    def show(done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
        sys.stderr.write(f"\r{NAME:<16} [{bar}] {done:>10,}/{total:<10,} {fraction:6.1%} {rate:>10,.0f} events/s")
        sys.stderr.flush()
    return show


async def run(data_dir: Path, list_only: bool = False) -> int:
    database_url = stack_url(data_dir, "database_url")
    keys = Keys(key_prefix(Settings.from_env().quota_prefix, database_url))
    pool = await eventlog.create_pool(database_url, timeout_s=10)
    client = redis.from_url(stack_url(data_dir, "redis_url"), socket_connect_timeout=5, socket_timeout=60)
    try:
        if list_only:
            async with pool.acquire() as conn:
                head = await eventlog.head(conn)
            print(f"{NAME:<20} position {await checkpoint(client, keys):>12,} of {head:,} (counters in Valkey)")
            return 0
        try:
            count, seconds = await rebuild(pool, client, keys, progress=progress_bar())
        except RebuildRunning as exc:
            print(f"\nswitchyard: {exc}", file=sys.stderr)
            return 1
        sys.stderr.write("\n")
        print(f"{NAME}: rebuilt from {count:,} events in {seconds:.2f} s ({count / max(seconds, 1e-9):,.0f} events/s)")
        return 0
    finally:
        await client.aclose()
        await pool.close()
