"""Benchmark catching up from the log over NATS: events per second from PostgreSQL, through metering's replay
(a subscriber's door, `metering.subscriber.v1...replay`), to a subscriber on this machine.

    python -m benchmarks.catchup [--events 500000] [--rounds 3] [--page 2000]

Starts NATS and PostgreSQL (EmbeddedStack, fresh data dir), fills the log with usage events the way
benchmarks/replay.py does (gateway-like mix, with the models' prices), starts the metering service as its own
process (its projections catch up first), then, each round, two subscribers from position 0 until they go live:

- `transport`: a subscriber (`switchyard_gateway.subscribe`) in this process whose `apply` does nothing: pages
  asked for, read from PostgreSQL, carried by NATS, decoded, and the position recorded per page;
- `tenant_spend`: examples/tenant_spend.py as its own process, folding calls, tokens and cost into its table.

Reported per round: events, seconds, events/s, and the CPU microseconds per event of metering, PostgreSQL, NATS
and the subscriber. The tenant_spend figures must equal metering's projections at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import psutil

from benchmarks.ingest import Metering
from benchmarks.replay import fill
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.settings import with_database
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.services.metering.projections import PROJECTIONS
from switchyard_gateway.subscribe import Subscriber

REPO = Path(__file__).resolve().parent.parent


async def nothing(_conn: asyncpg.Connection, _batch: list) -> None:
    """A subscriber that only records where it is."""


class Cpu:
    """CPU seconds of groups of processes from now on: metering, PostgreSQL, NATS, the subscriber."""

    def __init__(self, metering: Metering, subscriber: psutil.Process) -> None:
        self.groups = {"metering": [psutil.Process(p.pid) for p in metering.procs], "subscriber": [subscriber]}
        for proc in psutil.Process().children(recursive=True):
            name = {"postgres": "postgres", "nats-server": "nats"}.get(proc.name())
            if name:
                self.groups.setdefault(name, []).append(proc)
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out = {}
        for name, procs in self.groups.items():
            total = 0.0
            for proc in procs:
                try:
                    for one in (proc, *proc.children(recursive=True)) if name == "metering" else (proc,):
                        t = one.cpu_times()
                        total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def per_event(self, events: int) -> dict[str, float]:
        now = self._now()
        return {name: round((now[name] - self.start.get(name, 0.0)) / max(events, 1) * 1e6, 1) for name in now}


async def transport(nats_url: str, database_url: str, page: int, metering: Metering) -> dict:
    subscriber = Subscriber(f"bench-{uuid.uuid4().hex[:8]}", nothing, nats_url=nats_url, database_url=database_url,
                            page_events=page)
    cpu = Cpu(metering, psutil.Process())
    started = time.perf_counter()
    running = asyncio.ensure_future(subscriber.run())
    await subscriber.live.wait()
    seconds = time.perf_counter() - started
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    events = subscriber.position.value
    return {"events": events, "seconds": round(seconds, 2), "events_per_s": round(events / seconds),
            "cpu_us_per_event": cpu.per_event(events)}


async def tenant_spend(nats_url: str, database_url: str, metering: Metering) -> dict:
    env = {**os.environ, "SWITCHYARD_NATS_URL": nats_url, "TENANT_SPEND_DATABASE_URL": database_url}  # not argv:
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "tenant_spend.py"), "--catch-up-only"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)                   # any user reads that
    cpu = Cpu(metering, psutil.Process())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, _ = await asyncio.to_thread(proc.communicate)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)       # the one child reaped meanwhile: the subscriber
    found = re.search(rb"live at position ([\d,]+): ([\d,]+) events applied in ([\d.]+) s", out)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"tenant_spend.py did not catch up: {out.decode()[-2000:]}")
    applied, seconds = int(found.group(2).replace(b",", b"")), float(found.group(3))
    used = cpu.per_event(applied)
    used["subscriber"] = round((after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / applied * 1e6, 1)
    return {"events": applied, "seconds": seconds, "events_per_s": round(applied / seconds), "cpu_us_per_event": used}


async def equal_to_metering(log_url: str, own_url: str) -> bool:
    log, own = await asyncpg.connect(log_url), await asyncpg.connect(own_url)
    try:
        theirs = {r[0]: tuple(r[1:]) for r in await log.fetch(
            "SELECT c.tenant, c.calls, c.input_tokens, c.output_tokens, u.usd FROM (SELECT tenant, sum(calls) AS calls,"
            " sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens FROM tenant_token_counts GROUP BY"
            " tenant) c JOIN (SELECT tenant, sum(input_cost_usd + output_cost_usd) AS usd FROM usage_cost GROUP BY"
            " tenant) u USING (tenant)")}
        ours = {r[0]: tuple(r[1:]) for r in await own.fetch(
            "SELECT tenant, calls, input_tokens, output_tokens, cost_usd FROM tenant_spend")}
        return theirs == ours
    finally:
        await log.close()
        await own.close()


async def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="switchyard-catchup-"))
    root.chmod(0o755)
    stack = EmbeddedStack(root / "stack", durable=False)
    urls = stack.start()
    env = {**os.environ, "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_DATABASE_URL": urls.database_url,
           "SWITCHYARD_LOG_JSON": "true"}
    metering = Metering(env, root / "metering.log")
    pool = await eventlog.create_pool(urls.database_url)
    try:
        async with pool.acquire() as conn:
            await eventlog.migrate(conn)
        say(f"filling the log with {args.events:,} usage events ...")
        say(f"filled in {await fill(pool, args.events):.1f} s")
        metering.start()
        await metering.ready(120)
        async with pool.acquire() as conn:          # metering's projections catch up at start: not part of the figure
            head = await eventlog.head(conn)
            while await conn.fetchval("SELECT coalesce(min(position), 0) FROM projection_checkpoints"
                                      " WHERE projection = ANY($1)", list(PROJECTIONS)) < head:
                await asyncio.sleep(0.2)
        ok = True
        for round_ in range(1, args.rounds + 1):
            for name in ("transport", "tenant_spend"):
                named = f"sub_{uuid.uuid4().hex[:8]}"
                own = with_database(urls.database_url, named)
                async with pool.acquire() as conn:
                    await conn.execute(f'CREATE DATABASE "{named}"')
                got = await (transport(urls.nats_url, own, args.page, metering) if name == "transport"
                             else tenant_spend(urls.nats_url, own, metering))
                if name == "tenant_spend":
                    got["equal_to_metering"] = await equal_to_metering(urls.database_url, own)
                    ok = ok and got["equal_to_metering"]
                say(f"round {round_} {name}: {got}")
        return 0 if ok else 1
    finally:
        metering.stop()
        await pool.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def say(text: str) -> None:
    print(f"catchup: {text}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.catchup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="usage events in the log (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both subscribers (default: %(default)s)")
    parser.add_argument("--page", type=int, default=2000, help="events per page (default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(None))))
