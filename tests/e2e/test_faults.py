"""Nothing lost: NATS down, PostgreSQL down, metering killed, all under load, on a stack of our own.

The module starts its own NATS, PostgreSQL and Valkey (EmbeddedStack) and its own `switchyard up --demo`
against them, so stopping a server disturbs no other test. Each test drives calls through the gateway
with request ids of its own and then holds the log to account: one usage row per answered call.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import pytest

from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, start_up, stop_up, traversable_tempdir, wait_for
from tests.e2e.test_up import service_process

TABLES = ("token_counts", "tenant_token_counts", "usage_minutes", "usage_days", "usage_cost")


@dataclass
class OwnStack:
    servers: EmbeddedStack
    proc: subprocess.Popen[bytes]
    data_dir: Path
    url: str
    key: str
    database_url: str


@pytest.fixture(scope="module")
def own() -> Iterator[OwnStack]:
    root = traversable_tempdir("switchyard-faults-")
    servers = EmbeddedStack(root / "servers", durable=False)
    urls = servers.start()
    port = pick_free_port(set())
    key = f"sy_faultdemo_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_NATS_URL=urls.nats_url, SWITCHYARD_DATABASE_URL=urls.database_url,
               SWITCHYARD_REDIS_URL=urls.redis_url, SWITCHYARD_DEMO_KEY=key,
               SWITCHYARD_ADMIN_KEY=f"sy_faultadmin_{uuid.uuid4().hex}")
    try:
        proc = start_up(["--demo", "--data-dir", str(root / "data"), "--port", str(port), "--no-fsync"], env,
                        root / "up.log")
    except RuntimeError:
        servers.stop()
        raise
    try:
        yield OwnStack(servers, proc, root / "data", f"http://127.0.0.1:{port}", key, urls.database_url)
    finally:
        stop_up(proc)
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


class Load:
    """Calls through the gateway from `workers` concurrent clients until stopped; remembers who got a 200."""

    def __init__(self, stack: OwnStack, prefix: str, workers: int = 8, limit: int | None = None,
                 until_refused: bool = False) -> None:
        self.stack, self.prefix, self.workers, self.limit = stack, prefix, workers, limit
        self.until_refused, self.refused = until_refused, 0     # a worker ends at its first refused connection
        self.answered: list[str] = []
        self.failed: list[int] = []
        self.sent = 0
        self.running = True

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers)       # lighter than httpx: the stack gets the CPU
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.workers)))

    async def _worker(self, client: aiohttp.ClientSession) -> None:
        body = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "keep counting"}]}'
        while self.running and (self.limit is None or self.sent < self.limit):
            self.sent += 1
            request_id = f"{self.prefix}-{self.sent}"
            try:
                async with client.post(f"{self.stack.url}/v1/chat/completions", data=body, headers={
                        "Authorization": f"Bearer {self.stack.key}", "X-Request-Id": request_id,
                        "Content-Type": "application/json"}) as reply:
                    await reply.read()
                    if reply.status == 200:
                        self.answered.append(request_id)
                    else:
                        self.failed.append(reply.status)
            except aiohttp.ClientConnectionError:
                if not self.until_refused:
                    raise
                self.refused += 1
                return


async def rows_per_call(stack: OwnStack, prefix: str) -> tuple[int, int]:
    """(usage rows, distinct request ids) among the calls whose ids start with `prefix`."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT payload->>'request_id') AS calls FROM events"
            " WHERE type = 'usage.recorded.v2' AND payload->>'request_id' LIKE $1", f"{prefix}-%")
    finally:
        await conn.close()
    return row["rows"], row["calls"]


async def every_call_recorded_once(stack: OwnStack, load: Load, timeout_s: float) -> None:
    """Every answered call has exactly one usage row within `timeout_s`. If not, the failure says whether the
    missing rows were late (all there after as long again) or lost (still missing then)."""
    expected = len(load.answered)
    try:
        await wait_for(lambda: _counted(stack, load.prefix, expected), timeout_s=timeout_s, interval_s=0.25,
                       what=f"{expected} usage rows")
    except AssertionError:
        first = await rows_per_call(stack, load.prefix)
        try:
            await wait_for(lambda: _counted(stack, load.prefix, expected), timeout_s=timeout_s, interval_s=0.25)
        except AssertionError:
            then = await rows_per_call(stack, load.prefix)
            raise AssertionError(f"lost: {then[1]} of {expected} answered calls have a usage row after "
                                 f"{2 * timeout_s:g} s ({first[1]} after {timeout_s:g} s)") from None
        raise AssertionError(f"late: {first[1]} of {expected} answered calls had a usage row after {timeout_s:g} s, "
                             f"all of them within {2 * timeout_s:g} s") from None
    assert await rows_per_call(stack, load.prefix) == (expected, expected)


async def _counted(stack: OwnStack, prefix: str, expected: int) -> bool:
    try:
        return (await rows_per_call(stack, prefix))[1] >= expected
    except (OSError, asyncpg.PostgresError):
        return False


async def outage(stack: OwnStack, component: str, load: Load, seconds: float) -> None:
    """Let the load run, stop a server for `seconds` while it goes on, start it again, let it run a little."""
    await wait_for(lambda: len(load.answered) >= 50, timeout_s=15, what="the load under way")
    await asyncio.to_thread(stack.servers.stop_component, component, graceful=False)     # like a crash
    during = len(load.answered)
    await asyncio.sleep(seconds)
    served_while_down = len(load.answered) - during
    await asyncio.to_thread(stack.servers.start_component, component)
    await asyncio.sleep(1.0)
    load.running = False
    assert served_while_down > 0, f"no call was answered while {component} was down"


async def test_calls_go_on_while_nats_is_down_and_every_usage_event_arrives_afterwards(own: OwnStack) -> None:
    load = Load(own, f"nats-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(load.run())
    await outage(own, "nats", load, seconds=3.0)
    await task
    assert load.failed == []
    await every_call_recorded_once(own, load, timeout_s=30)


async def test_calls_go_on_while_postgres_is_down_and_metering_catches_up(own: OwnStack) -> None:
    load = Load(own, f"pg-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(load.run())
    await outage(own, "postgres", load, seconds=3.0)
    await task
    assert load.failed == []
    await every_call_recorded_once(own, load, timeout_s=30)


async def test_metering_killed_mid_5000_calls_loses_nothing_and_projections_equal_a_replay(own: OwnStack) -> None:
    load = Load(own, f"kill-{uuid.uuid4().hex[:8]}", workers=32, limit=5000)
    task = asyncio.create_task(load.run())
    await wait_for(lambda: len(load.answered) >= 1000, timeout_s=30, what="a fifth of the calls answered")
    victim = service_process(own.proc.pid, "metering")
    for process in [*victim.children(recursive=True), victim]:
        process.send_signal(signal.SIGKILL)
    await task
    assert load.failed == [] and len(load.answered) == 5000
    await wait_for(lambda: _restarted(own, victim.pid), timeout_s=20, what="metering restarted by the supervisor")
    await every_call_recorded_once(own, load, timeout_s=40)
    await wait_for(lambda: _caught_up(own), timeout_s=20, what="projections at the head of the log")
    live = await snapshot(own)
    replay = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "switchyard_gateway.cli", "replay", "--all",
                                                      "--data-dir", str(own.data_dir)],
                                     capture_output=True, text=True, timeout=60, cwd=REPO,
                                     env={k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")})
    assert replay.returncode == 0, replay.stderr
    assert await snapshot(own) == live


def _restarted(stack: OwnStack, old_pid: int) -> bool:
    try:
        return service_process(stack.proc.pid, "metering").pid != old_pid
    except (LookupError, psutil.Error):
        return False


async def _caught_up(stack: OwnStack) -> bool:
    conn = await asyncpg.connect(stack.database_url)
    try:
        head = await conn.fetchval("SELECT max(position) FROM events")
        positions = await conn.fetch("SELECT position FROM projection_checkpoints WHERE projection = ANY($1)",
                                     ["token_counts", "usage_series", "usage_cost"])
    finally:
        await conn.close()
    return len(positions) == 3 and all(r["position"] == head for r in positions)


async def snapshot(stack: OwnStack) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(stack.database_url)
    try:
        return {t: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")), key=repr) for t in TABLES}
    finally:
        await conn.close()
