"""`switchyard replay quota`: rebuild every quota counter in Valkey from position 0 of the event log."""

from __future__ import annotations

import sys
from pathlib import Path

from switchyard_gateway.events import ProgressBar
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.quotas.periods import Keys, key_prefix
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.quota.counters import RebuildRunning, checkpoint, rebuild
from switchyard_gateway.services.quota.settings import Settings

NAME = "quota"


async def run(data_dir: Path, list_only: bool = False) -> int:
    database_url = running_url(data_dir, "database_url")
    keys = Keys(key_prefix(Settings.from_env().quota_prefix, database_url))
    pool = await eventlog.create_pool(database_url, timeout_s=10)
    valkey = Valkey(running_url(data_dir, "redis_url"), connect_timeout_s=5.0, timeout_s=60.0)
    try:
        if list_only:
            async with pool.acquire() as conn:
                head = await eventlog.head(conn)
            print(f"{NAME:<20} position {await checkpoint(valkey, keys):>12,} of {head:,} (counters in Valkey)")
            return 0
        try:
            count, seconds = await rebuild(pool, valkey, keys, progress=ProgressBar(NAME))
        except RebuildRunning as exc:
            print(f"\nswitchyard: {exc}", file=sys.stderr)
            return 1
        sys.stderr.write("\n")
        print(f"{NAME}: rebuilt from {count:,} events in {seconds:.2f} s ({count / max(seconds, 1e-9):,.0f} events/s)")
        return 0
    finally:
        await valkey.close()
        await pool.close()
