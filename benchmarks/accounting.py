"""Check the usage accounting: one `usage.recorded.v2` event in the log per gateway call."""

from __future__ import annotations

import asyncio
import time

import asyncpg

USAGE_RECORDED = "usage.recorded.v2"


class UsageLog:
    """Counts usage events in the event log, and waits for the count to reach what the calls imply."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, database_url: str) -> UsageLog:
        return cls(await asyncpg.connect(database_url))

    async def close(self) -> None:
        await self.conn.close()

    async def count(self) -> int:
        return await self.conn.fetchval("SELECT count(*) FROM events WHERE type = $1", USAGE_RECORDED)

    async def wait_for(self, expected: int, timeout_s: float = 60.0, still_s: float = 5.0) -> tuple[int, float]:
        """Poll until the count reaches `expected`, stops growing for `still_s`, or `timeout_s` passes.

        Returns the last count and the seconds waited. A count past `expected` is returned at
        once: more events than calls is a finding, not something to wait out.
        """
        started = time.monotonic()
        last, last_change = await self.count(), started
        while last < expected:
            now = time.monotonic()
            if now - last_change > still_s or now - started > timeout_s:
                break
            await asyncio.sleep(0.05)  # polling the log under a deadline
            count = await self.count()
            if count != last:
                last, last_change = count, time.monotonic()
        return last, time.monotonic() - started

    async def summary(self) -> dict:
        """Usage events by status and endpoint, distinct request ids, and the gateway's own overhead_ms."""
        rows = await self.conn.fetch(
            "SELECT payload->>'status' AS status, payload->>'endpoint_id' AS endpoint, payload->>'api' AS api,"
            " count(*) AS n FROM events WHERE type = $1 GROUP BY 1, 2, 3 ORDER BY 4 DESC", USAGE_RECORDED)
        stats = await self.conn.fetchrow(
            "SELECT count(*) AS events, count(DISTINCT payload->>'request_id') AS request_ids,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY (payload->>'overhead_ms')::float) AS overhead_p50,"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY (payload->>'overhead_ms')::float) AS overhead_p99"
            " FROM events WHERE type = $1", USAGE_RECORDED)
        return {
            "events": stats["events"], "distinct_request_ids": stats["request_ids"],
            "gateway_reported_overhead_ms": {"p50": _round(stats["overhead_p50"]), "p99": _round(stats["overhead_p99"])},
            "by_status_endpoint_api": [dict(r) for r in rows],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
