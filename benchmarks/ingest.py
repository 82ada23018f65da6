"""Benchmark metering's ingest: usage events published into JetStream the way gateways batch them,
committed by the metering service into the event log and its projections.

    python -m benchmarks.ingest [--events 300000] [--rate 25000] [--no-fsync] [--replicas 2] [--nats-nodes 3]

Starts NATS and PostgreSQL (EmbeddedStack, fresh data dir) and the metering service as its own
process (`--replicas N`: N of them sharing the durable consumer, as `up --replicas metering=N` runs
them; `--nats-nodes 3`: NATS as a 3-node cluster with the streams on all three), then runs two phases:

- backlog: N events are published while metering is stopped; metering is started and the
  rate is measured from its first to its last commit (the drain rate);
- sustained: events are published at a fixed rate for a while, batched per tenant every 50 ms
  like the gateway's publisher (the messages are encoded before the clock starts, so that the load
  generator takes as little of the shared cores as it can); metering must keep up (lag bounded,
  every event committed). `steady_committed_per_s` is the slope of events committed over time
  from a quarter into the run; `lag_each_second` shows whether the lag stays bounded.

Finally the log must hold exactly one row per event and the projections must equal their totals.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode_batch
from switchyard_gateway.contracts.events import UsageRecorded, subject_of
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.kit.stack_proc import pick_free_port

MODELS = ("llama3.2", "nomic-embed-text", "qwen2.5")
ENDPOINTS = ("ollama-1", "ollama-2", "vllm-1", "vllm-2")
LINGER_S = 0.05            # as services/gateway/pipeline/usage.py
MAX_BATCH = 256


def usage_events(n: int, start: datetime, span_s: float, seed: int = 1, tenants: int = 50) -> Iterator[UsageRecorded]:
    """A gateway-like mix: each tenant mostly on one model and one endpoint pair, 2% failed, 3% estimated."""
    rnd = random.Random(seed)
    for i in range(n):
        t = rnd.randrange(tenants)
        model = MODELS[t % 3] if rnd.random() < 0.9 else rnd.choice(MODELS)
        endpoint = ENDPOINTS[(t % 2) * 2 + (rnd.random() < 0.15)]
        r = rnd.random()
        yield UsageRecorded(
            request_id=f"bench-{seed}-{i}", tenant_id=f"tenant-{t:02d}", key_id=f"sy-{t:08x}", model=model,
            requested_model=model, api="openai.embeddings" if model == "nomic-embed-text" else "openai.chat",
            outcome="ok" if r < 0.98 else ("error" if r < 0.995 else "cancelled"), status=200,
            input_tokens=rnd.randint(1, 500), output_tokens=rnd.randint(0, 500), estimated=rnd.random() < 0.03,
            stream=bool(i % 2), endpoint_id=endpoint, provider_id="bench", upstream_model=model, attempts=1,
            duration_ms=12.5, ttfb_ms=3.2, overhead_ms=0.3, occurred_at=start + timedelta(seconds=i * span_s / n),
        )


def by_tenant(events: list[UsageRecorded]) -> list[list[UsageRecorded]]:
    """One message per tenant and at most MAX_BATCH events, as the gateway's publisher groups them."""
    groups: dict[str, list[UsageRecorded]] = {}
    for event in events:
        groups.setdefault(event.tenant_id, []).append(event)
    return [g[i:i + MAX_BATCH] for g in groups.values() for i in range(0, len(g), MAX_BATCH)]


Message = tuple[str, bytes, dict[str, str]]       # subject, body, headers


def messages(events: list[UsageRecorded]) -> list[Message]:
    """The JetStream messages a gateway would publish for these events (encoded ahead of the clock)."""
    return [(subject_of(batch[0]), encode_batch(batch), {subjects.MSG_ID_HEADER: f"{batch[0].event_id}+{len(batch)}"})
            for batch in by_tenant(events)]


async def publish(js: object, ready: list[Message]) -> int:
    futures = [await js.publish_async(subject, body, headers=headers)  # type: ignore[attr-defined]
               for subject, body, headers in ready]
    await asyncio.gather(*futures)
    return len(futures)


class Metering:
    """The metering service as `switchyard up` runs it: `replicas` processes, each on a port of its own, sharing
    the durable consumer."""

    def __init__(self, env: dict[str, str], log_path: Path, replicas: int = 1) -> None:
        self.env, self.log_path = env, log_path
        self.ports = [pick_free_port(set()) for _ in range(replicas)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 — the children own it
        for number, port in enumerate(self.ports, 1):
            own = {"SWITCHYARD_PORT": str(port)}
            if len(self.ports) > 1:
                own["SWITCHYARD_INSTANCE"] = f"metering-{number}"
            self.procs.append(subprocess.Popen([sys.executable, "-m", "switchyard_gateway.services.metering"],
                                               env={**self.env, **own}, stdout=log, stderr=subprocess.STDOUT))

    async def ready(self, timeout_s: float = 60) -> float:
        """When every replica's /health first answered (time.perf_counter)."""
        deadline = time.perf_counter() + timeout_s
        for port in self.ports:
            while True:
                try:
                    await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    if time.perf_counter() > deadline:
                        raise TimeoutError("the metering service did not start") from None
                    await asyncio.sleep(0.01)
        return time.perf_counter()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(30)
        self.procs = []


async def committed(conn: asyncpg.Connection) -> int:
    """Usage events committed so far, read from a small projection (counting the log's rows would load it)."""
    return await conn.fetchval("SELECT coalesce(sum(calls), 0)::bigint FROM tenant_token_counts")


async def wait_commits(conn: asyncpg.Connection, target: int, timeout_s: float) -> tuple[float, float]:
    """Poll until `target` usage events are in the log; (time of the first commit seen, of the last)."""
    first = last = 0.0
    seen = 0
    deadline = time.perf_counter() + timeout_s
    while seen < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {seen:,} of {target:,} events committed in {timeout_s:.0f} s")
        now_seen = await committed(conn)
        now = time.perf_counter()
        if now_seen and not first:
            first = now
        if now_seen != seen:
            last = now
        seen = now_seen
        await asyncio.sleep(0.02)
    return first, last


async def backlog_phase(js: object, conn: asyncpg.Connection, metering: Metering, n: int, seed: int) -> dict:
    events = list(usage_events(n, datetime.now(UTC) - timedelta(hours=1), 3600.0, seed))
    before = await committed(conn)
    started = time.perf_counter()
    for i in range(0, n, 20_000):
        await publish(js, messages(events[i:i + 20_000]))
    published_s = time.perf_counter() - started
    metering.start()
    cpu = CpuMeter(metering)
    ready = await metering.ready()
    _, last = await wait_commits(conn, before + n, 300)
    # From the moment the service answers: a batch of up to 1,000 messages commits tens of thousands of
    # events at once, so the first commit seen is no start line.
    return {"events": n, "publish_s": round(published_s, 2), "drain_s": round(last - ready, 2),
            "events_per_s": round(n / max(last - ready, 1e-3)), "cpu_us_per_event": cpu.per(n),
            "other_cores": cpu.other_cores()}


class CpuMeter:
    """CPU seconds used from now on by the metering process (and its granian worker), PostgreSQL, NATS and
    this benchmark, which plays the gateways publishing usage."""

    def __init__(self, metering: Metering) -> None:
        assert metering.procs
        self.roots = [psutil.Process(proc.pid) for proc in metering.procs]
        self.start = self._now()
        self.started, self.machine = time.perf_counter(), _machine_busy()

    def other_cores(self) -> float:
        """Cores other processes of the machine kept busy since the start (the machine is shared)."""
        now = self._now()
        ours = sum(t - self.start[name].get(pid, 0.0) for name in now for pid, t in now[name].items())
        return round(max(0.0, _machine_busy() - self.machine - ours) / (time.perf_counter() - self.started), 2)

    def _groups(self) -> dict[str, list[psutil.Process]]:
        by_name: dict[str, list[psutil.Process]] = {"postgres": [], "nats-server": []}
        for proc in psutil.Process().children(recursive=True):      # ours only: the machine may be shared
            try:
                if proc.name() in by_name:
                    by_name[proc.name()].append(proc)
            except psutil.Error:
                continue
        metering = [p for root in self.roots for p in (root, *root.children(recursive=True))]
        return {"metering": metering, "postgres": by_name["postgres"], "nats": by_name["nats-server"],
                "publisher": [psutil.Process()]}        # this process: the gateways' share, played here

    def _now(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for name, procs in self._groups().items():
            out[name] = {}
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    out[name][proc.pid] = t.user + t.system
                except psutil.Error:
                    pass
        return out

    def per(self, events: int) -> dict[str, float]:
        """Microseconds of CPU per event, per group (processes that started meanwhile count from zero)."""
        now = self._now()
        return {name: round(sum(t - self.start[name].get(pid, 0.0) for pid, t in now[name].items())
                            / events * 1e6, 1) for name in now}


async def sustained_phase(js: object, conn: asyncpg.Connection, metering: Metering, rate: float, seconds: float,
                          seed: int) -> dict:
    n = int(rate * seconds)
    per_tick = max(1, int(rate * LINGER_S))
    events = list(usage_events(n, datetime.now(UTC), seconds, seed))
    ticks = [messages(events[i:i + per_tick]) for i in range(0, n, per_tick)]   # the gateways' encoding, done now
    del events
    before = await committed(conn)
    cpu = CpuMeter(metering)
    started = time.perf_counter()
    lags: list[int] = []
    seen: list[tuple[float, int]] = []          # (time, events committed) once a second while publishing
    vacuuming: list[int] = []                   # autovacuum workers at work, once a second
    for tick, i in enumerate(range(0, n, per_tick)):
        await publish(js, ticks[tick])
        due = started + (i + per_tick) / rate
        if i % (per_tick * 20) == 0:
            done = await committed(conn) - before
            seen.append((time.perf_counter(), done))
            lags.append(i - done)
            vacuuming.append(await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"))
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    publish_s = time.perf_counter() - started
    _, last = await wait_commits(conn, before + n, 120)
    # Steady state: the commit rate from a quarter into the run to its end, past the pipeline's fill
    # (lingering batches make the first commits and the last ones trail the publishing by a second or two).
    return {"events": n, "target_per_s": rate, "published_per_s": round(n / publish_s),
            "steady_committed_per_s": slope(seen[len(seen) // 4:]),
            "committed_per_s": round(n / (last - started)), "caught_up_after_s": round(last - started - publish_s, 2),
            "max_lag_events": max(lags, default=0), "lag_each_second": lags,
            "autovacuum_workers_each_second": vacuuming, "cpu_us_per_event": cpu.per(n),
            "other_cores": cpu.other_cores()}


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def slope(points: list[tuple[float, int]]) -> int | None:
    """Events per second: the least-squares slope of events committed over time (batches commit in steps)."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    num = sum((t - mean_t) * (c - mean_c) for t, c in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return round(num / den) if den else None


async def check(conn: asyncpg.Connection, expected: int) -> dict:
    rows = await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", subjects.USAGE_RECORDED)
    distinct = await conn.fetchval("SELECT count(DISTINCT payload->>'request_id') FROM events WHERE type = $1",
                                   subjects.USAGE_RECORDED)
    calls = await conn.fetchval("SELECT sum(calls)::bigint FROM token_counts")
    minutes = await conn.fetchval("SELECT sum(calls)::bigint FROM usage_minutes")
    cost_calls = await conn.fetchval("SELECT sum(calls)::bigint FROM usage_cost")
    ok = rows == distinct == expected == calls == minutes == cost_calls
    vacuums = {r["relname"]: (r["autovacuum_count"], r["autoanalyze_count"]) for r in await conn.fetch(
        "SELECT relname, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
        " WHERE autovacuum_count + autoanalyze_count > 0 ORDER BY relname")}
    return {"rows": rows, "distinct_request_ids": distinct, "token_counts_calls": calls,
            "series_calls": minutes, "cost_calls": cost_calls, "exact": ok,
            "autovacuum_autoanalyze_runs": vacuums}


async def main(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="switchyard-ingest-"))
    root.chmod(0o755)
    stack = EmbeddedStack(root / "stack", durable=not args.no_fsync, nats_nodes=args.nats_nodes)
    urls = stack.start()
    stream_replicas = min(3, args.nats_nodes)
    env = {**os.environ, "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_DATABASE_URL": urls.database_url,
           "SWITCHYARD_LOG_JSON": "true", "SWITCHYARD_STREAM_REPLICAS": str(stream_replicas)}
    metering = Metering(env, root / "metering.log", args.replicas)
    nc = await natsio.connect(urls.nats_url, "bench-ingest", 10)
    await natsio.ensure_streams(nc, stream_replicas)
    say(f"{args.replicas} metering replica(s), NATS on {args.nats_nodes} node(s), streams on {stream_replicas}")
    js = nc.jetstream(timeout=30, publish_async_max_pending=20_000)
    conn: asyncpg.Connection | None = None
    try:
        metering_started = Metering(env, root / "warmup.log")     # creates schema and the durable consumer
        metering_started.start()
        conn = await _connect_when_migrated(urls.database_url)
        metering_started.stop()
        say(f"backlog: publishing {args.events:,} events while metering is stopped ...")
        backlog = await backlog_phase(js, conn, metering, args.events, seed=1)
        say(f"backlog drained at {backlog['events_per_s']:,} events/s ({backlog})")
        say(f"sustained: {args.rate:,.0f} events/s for {args.seconds:.0f} s ...")
        sustained = await sustained_phase(js, conn, metering, args.rate, args.seconds, seed=2)
        say(f"sustained: {sustained}")
        result = await check(conn, args.events + int(args.rate * args.seconds))
        say(f"accounting: {result}")
        return 0 if result["exact"] else 1
    finally:
        metering.stop()
        if conn is not None:
            await conn.close()
        await nc.close()
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)      # a million events take gigabytes


async def _connect_when_migrated(url: str) -> asyncpg.Connection:
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = await asyncpg.connect(url)
            if await conn.fetchval("SELECT to_regclass('usage_cost') IS NOT NULL"):
                return conn
            await conn.close()
        except (OSError, asyncpg.PostgresError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("metering did not migrate the database")
        await asyncio.sleep(0.2)


def say(text: str) -> None:
    print(f"ingest: {text}", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000, help="backlog events (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=25_000, help="sustained events/s (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="sustained phase length (default: %(default)s)")
    parser.add_argument("--no-fsync", action="store_true", help="PostgreSQL without fsync")
    parser.add_argument("--replicas", type=int, default=1, help="metering processes (default: %(default)s)")
    parser.add_argument("--nats-nodes", type=int, default=1, help="NATS cluster nodes, 1 or 3+ (default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(None))))
