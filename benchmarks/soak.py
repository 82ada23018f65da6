"""Soak the stack: every process's memory idle, every 10 s through a long run on the policy path, and idle again.

    python -m benchmarks.soak [--minutes 10] [--concurrency 32] [--every 10] [--settle 20] [--json PATH]
                              [--wait-quiet S] [--workers N]

Starts `switchyard up --demo` as `benchmarks.run` does by default (the demo tenant with token and
rate limits, fsync on for PostgreSQL, Valkey and the gateway's journal), lets it settle and reads
the resident memory (RSS, and USS where readable) of every process, grouped by service. Then
32 keep-alive connections call it for `--minutes` (half chat, a quarter streamed chat, a quarter
embeddings) while the memory is read every `--every` seconds; then the run's accounting must be
exact (every call answered 200 is one usage event in the log, the tenant's counters in Valkey and
metering's projection count the log's calls and tokens), and the memory is read idle again.

A service is flat when its RSS over the last third of the run is within noise (the larger of 3 MB
and 3 %) of the first third after the first fifth (start-up growth: caches, pools, the allocator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg
import psutil
import uvloop

from benchmarks import procs
from benchmarks.accounting import USAGE_RECORDED, UsageLog
from benchmarks.cpu import SERVICES, ProcessTree, wait_until_quiet
from benchmarks.load import PoolJob, SHAPES, Target
from benchmarks.phases import SIM_KNOBS, say
from benchmarks.report import machine
from benchmarks.run import POLICY_LIMITS
from benchmarks.stack import Stack

MB = 1024 * 1024
MIX = {"chat": 0.5, "stream": 0.25, "embed": 0.25}     # shares of the connections
IDLE_TARGET_MB = 100


def memory(tree: ProcessTree) -> dict[str, dict]:
    """Each group's processes now: pid, name, RSS and (where this user may read it) USS, in MB."""
    out: dict[str, dict] = {}
    for group, processes in tree.groups().items():
        entry = out.setdefault(group, {"rss_mb": 0.0, "uss_mb": 0.0, "processes": []})
        for proc in processes:
            try:
                rss = proc.memory_info().rss
                try:
                    uss: int | None = proc.memory_full_info().uss
                except psutil.AccessDenied:
                    uss = None
                label = proc.name()
            except psutil.Error:
                continue
            entry["processes"].append({"pid": proc.pid, "name": label, "rss_mb": round(rss / MB, 1),
                                       "uss_mb": None if uss is None else round(uss / MB, 1)})
            entry["rss_mb"] = round(entry["rss_mb"] + rss / MB, 1)
            entry["uss_mb"] = round(entry["uss_mb"] + (uss or 0) / MB, 1)
    return out


def flat(series: list[float]) -> dict:
    """Whether a series of RSS samples (MB) stays within noise after its first fifth; the growth and slope."""
    body = series[len(series) // 5:]
    if len(body) < 3:
        return {"flat": None, "growth_mb": None, "slope_mb_per_min": None}
    third = max(1, len(body) // 3)
    first, last = statistics.mean(body[:third]), statistics.mean(body[-third:])
    growth = last - first
    return {"flat": growth <= max(3.0, 0.03 * first), "growth_mb": round(growth, 1),
            "first_mb": round(first, 1), "last_mb": round(last, 1)}


async def soak(stack: Stack, args: argparse.Namespace) -> dict:
    assert stack.process is not None
    sims = {int(e.url.rsplit(":", 1)[1].split("/")[0]): e.id for e in stack.endpoints.values()}
    tree = ProcessTree(stack.process.pid, sims)
    for endpoint in stack.endpoints.values():
        stack.post_json(endpoint.url + "/_sim/config", SIM_KNOBS)
    say(f"settling {args.settle:g} s")
    await asyncio.sleep(args.settle)               # a benchmark's settling period, not a wait for a condition
    idle_before = memory(tree)
    _show("idle, before", idle_before)

    gateway = Target("gateway", stack.gateway_url, {"Content-Type": "application/json",
                                                    "Authorization": f"Bearer {stack.demo_key}"})
    seconds = args.minutes * 60
    jobs = []
    left = args.concurrency
    for i, (kind, share) in enumerate(MIX.items()):
        conns = left if i == len(MIX) - 1 else max(1, round(args.concurrency * share))
        left -= conns
        jobs.append(PoolJob(url=gateway.url(SHAPES[kind]), headers=gateway.headers, shape=kind, concurrency=conns,
                            requests=0, seconds=seconds, warmup_per_conn=1))
    samples: list[dict] = []
    started = asyncio.Event()
    warm_ok = [0]

    async def on_ready(warm: dict) -> None:
        warm_ok[0] += warm["ok"]
        started.set()

    async def sample() -> None:
        await started.wait()
        t0 = time.monotonic()
        while True:
            samples.append({"t_s": round(time.monotonic() - t0, 1), "memory": memory(tree)})
            mb = {g: samples[-1]["memory"][g]["rss_mb"] for g in SERVICES if g in samples[-1]["memory"]}
            say(f"  {samples[-1]['t_s']:7.1f} s  " + "  ".join(f"{g} {v:.0f}" for g, v in mb.items()))
            await asyncio.sleep(args.every)

    say(f"soak: {args.concurrency} connections ({', '.join(f'{j.shape} {j.concurrency}' for j in jobs)}) "
        f"for {args.minutes:g} min")
    sampler = asyncio.ensure_future(sample())
    try:
        results = await asyncio.gather(*(procs.run(job, 1, on_ready, timeout_s=seconds + 600) for job in jobs))
    finally:
        sampler.cancel()
    samples.append({"t_s": round(seconds, 1), "memory": memory(tree)})
    calls = {job.shape: r["ok"] for job, r in zip(jobs, results)}
    errors = {job.shape: r["errors"] for job, r in zip(jobs, results)}
    answered = sum(calls.values()) + warm_ok[0]
    say(f"calls answered 200: {answered} ({calls}, warm-up {warm_ok[0]}); errors {errors}")

    accounting = await account(stack, answered + args.before_calls)
    say(f"idle again: settling {args.settle:g} s")
    await asyncio.sleep(args.settle)
    idle_after = memory(tree)
    _show("idle, after", idle_after)
    groups = sorted({g for s in samples for g in s["memory"]})
    trend = {g: flat([s["memory"][g]["rss_mb"] for s in samples if g in s["memory"]]) for g in groups}
    return {"calls": calls, "errors": errors, "warmup_calls": warm_ok[0], "accounting": accounting,
            "idle_before": idle_before, "idle_after": idle_after, "trend": trend, "samples": samples,
            "rps": round(sum(calls.values()) / seconds, 1)}


async def account(stack: Stack, answered: int) -> dict:
    """Wait for the log to hold every call, then for the counters to agree with it; every figure side by side."""
    log = await UsageLog.connect(stack.database_url)
    try:
        events, waited = await log.wait_for(answered, timeout_s=120.0, still_s=15.0)
        conn: asyncpg.Connection = log.conn
        tokens = await conn.fetchrow(
            "SELECT count(*) AS calls, count(DISTINCT payload->>'request_id') AS request_ids,"
            " coalesce(sum((payload->>'input_tokens')::bigint), 0) AS input,"
            " coalesce(sum((payload->>'output_tokens')::bigint), 0) AS output"
            " FROM events WHERE type = $1 AND tenant = 'demo'", USAGE_RECORDED)
        deadline = time.monotonic() + 60.0
        while True:                                  # the counters follow the log: settlement, projections
            usage = _get(stack, "/api/v1/tenant-models/usage?period=month", stack.demo_key)["usage"]
            projected = await conn.fetchrow(
                "SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(input_tokens), 0) AS input,"
                " coalesce(sum(output_tokens), 0) AS output FROM tenant_token_counts WHERE tenant = 'demo'")
            counters = {"valkey": {"calls": usage["requests"], "input": usage["input_tokens"],
                                   "output": usage["output_tokens"]},
                        "metering": {k: int(projected[k]) for k in ("calls", "input", "output")}}
            logged = {"calls": int(tokens["calls"]), "input": int(tokens["input"]), "output": int(tokens["output"])}
            if all(c == logged for c in counters.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)                 # polling the counters under a deadline
    finally:
        await log.close()
    exact = events == answered and logged["calls"] == answered == int(tokens["request_ids"]) \
        and all(c == logged for c in counters.values())
    return {"answered_200": answered, "usage_events": events, "waited_s": round(waited, 1), "log": logged,
            "distinct_request_ids": int(tokens["request_ids"]), **counters, "exact": exact}


def _get(stack: Stack, path: str, key: str) -> dict:
    request = urllib.request.Request(stack.gateway_url + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — loopback only
        return json.loads(response.read())


def _show(title: str, snapshot: dict[str, dict]) -> None:
    say(f"{title}: RSS (USS) MB per group")
    for group in sorted(snapshot):
        entry = snapshot[group]
        parts = ", ".join(f"{p['name']} {p['rss_mb']:.0f}" for p in entry["processes"])
        say(f"  {group:12} {entry['rss_mb']:7.1f} ({entry['uss_mb']:.1f})  [{parts}]")


def report(result: dict) -> str:
    """The soak as a table: per service idle before, during (first / last third, max) and idle after."""
    lines = [f"Soak: {result['config']['minutes']:g} min at {result['config']['concurrency']} connections "
             f"({result['rps']:.0f} calls/s), policy path on; RSS in MB (USS in parentheses), commit "
             f"{result['machine']['commit']}, load average before {result['machine']['load_average_before']}",
             f"  {'group':12}{'idle before':>16}{'run first':>11}{'run last':>10}{'run max':>9}{'idle after':>16}"
             f"  flat   <= {IDLE_TARGET_MB} MB idle"]
    for group in sorted(result["trend"]):
        before, after = result["idle_before"].get(group, {}), result["idle_after"].get(group, {})
        trend = result["trend"][group]
        peak = max(s["memory"][group]["rss_mb"] for s in result["samples"] if group in s["memory"])
        target = "" if group not in SERVICES else ("yes" if max(before.get("rss_mb", 0), after.get("rss_mb", 0))
                                                   <= IDLE_TARGET_MB else "NO")
        lines.append(f"  {group:12}{_mb(before):>16}{trend.get('first_mb') or '-':>11}{trend.get('last_mb') or '-':>10}"
                     f"{peak:9.1f}{_mb(after):>16}  {'yes' if trend['flat'] else 'NO' if trend['flat'] is False else '-':5}"
                     f"  {target}")
    acc = result["accounting"]
    lines.append(f"Accounting: {acc['answered_200']} calls answered 200, {acc['usage_events']} usage events "
                 f"({acc['distinct_request_ids']} request ids); log {acc['log']}, Valkey counters {acc['valkey']}, "
                 f"metering {acc['metering']} -> {'EXACT' if acc['exact'] else 'MISMATCH'}")
    return "\n".join(lines)


def _mb(entry: dict) -> str:
    return f"{entry['rss_mb']:.1f} ({entry['uss_mb']:.1f})" if entry else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (default: %(default)s)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=20.0, help="idle seconds before measuring idle memory")
    parser.add_argument("--workers", type=int, default=0, help="gateway workers (default: `up`'s, one per core)")
    parser.add_argument("--venv", type=Path, help="run the stack from this virtualenv (e.g. one with the runtime "
                        "dependencies alone, as deployed: `pip install switchyard-gateway`)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S", help="first wait up to S s for quiet")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    args.before_calls = 0
    if args.wait_quiet:
        say(f"cores busy before the run: {wait_until_quiet(0.3, args.wait_quiet)}")
    info = machine()
    up_args = ["--gateway-workers", str(args.workers)] if args.workers else []
    with Stack(fsync=True, journal_fsync=True, up_args=up_args, venv=args.venv) as stack:
        stack.admin("PUT", "/api/admin/tenants/demo/limits", POLICY_LIMITS)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(soak(stack, args))
    result.update(machine=info, config={"minutes": args.minutes, "concurrency": args.concurrency,
                                        "venv": str(args.venv) if args.venv else "the benchmark's own",
                                        "every_s": args.every, "settle_s": args.settle, "workers": args.workers,
                                        "limits": POLICY_LIMITS, "mix": MIX})
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    services_flat = all(result["trend"][g]["flat"] is not False for g in SERVICES if g in result["trend"])
    return 0 if result["accounting"]["exact"] and services_flat else 1


if __name__ == "__main__":
    sys.exit(main())
