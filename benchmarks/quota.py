"""Benchmark what a reservation adds to a call: straight to Valkey (Lua) vs through the quota service over NATS.

    python -m benchmarks.quota [--calls 3000] [--warmup 300]
    python -m benchmarks.quota --through-gateway [--calls 2000] [--wait-quiet 120]

Starts NATS, PostgreSQL and Valkey (EmbeddedStack, no fsync) and the quota service in a fresh
temp dir, gives a tenant a daily and a monthly token quota, a USD budget and an RPM limit (four
counters), then times `QuotaClient.reserve` one call at a time, with three paths:
- no limits: the common case, nothing reserved (two dict lookups);
- direct: the request read and checked, its prompt counted with tiktoken, the plan, one EVALSHA on the
  gateway's pipelined Valkey connection (the script reads every counter, grants the output ceiling,
  charges them and records the hold);
- via NATS: the same estimate and plan, sent as a request to the quota service, which runs the
  same script with redis-py.
Prints p50/p90/p99 per path in microseconds, and the parts of the direct path.

`--through-gateway` measures the same thing as a client sees it: `switchyard up --demo --no-fsync`,
two tenants, one with those four limits and one with none, and sequential chat calls alternating
between their keys on keep-alive connections; the difference of the p50s is what reserving adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import uvloop

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import KeyIssued, ModelRegistered, TenantCreated
from switchyard_gateway.contracts.quota import LimitsUpdate, ReservePlan, ReserveReply, SetLimits
from switchyard_gateway.kit import natsio
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.quotas.periods import usd_nanos
from switchyard_gateway.quotas.plan import Estimate, plan
from switchyard_gateway.quotas.scripts import RESERVE_SCRIPT, reserve_call
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.reserve import QuotaClient
from switchyard_gateway.services.gateway.translate.asks import Ask, read_request

REPO = Path(__file__).resolve().parent.parent
TENANT, FREE = "bench", "free"
MODEL = ModelRegistered(model_id="llama3.2", input_price_per_1m=0.05, output_price_per_1m=0.10)
BODY = msgspec.json.encode({"model": "llama3.2", "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about railway switchyards and how trains are sorted."}]})
_reply = msgspec.json.Decoder(ReserveReply)


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6  # noqa: E731
    return f"p50 {pick(0.5):7.1f}  p90 {pick(0.9):7.1f}  p99 {pick(0.99):7.1f}  mean {statistics.fmean(ordered) * 1e6:7.1f}"


async def timed(n: int, call) -> list[float]:  # noqa: ANN001 — an async callable
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def measure(settings: Settings, calls: int, warmup: int) -> dict[str, list[float]]:
    nc = await natsio.connect(settings.nats_url, "bench-quota", 30)
    try:
        update = LimitsUpdate(daily_tokens=10**12, monthly_tokens=10**13, budget_usd=10.0**6, rpm=10**9)
        deadline = time.monotonic() + 60
        while True:                                  # the quota service is starting
            try:
                await natsio.request(nc, subjects.QUOTA_COMMAND, encode(SetLimits(tenant_id=TENANT, update=update)), 5)
                break
            except natsio.ServiceUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        catalog = Catalog()
        for event in (MODEL, TenantCreated(tenant_id=TENANT), TenantCreated(tenant_id=FREE)):
            catalog.apply(event)
        quota = await QuotaClient.start(nc, settings, catalog, Fallbacks(catalog))
        key = KeyIssued(key_id="sy_bench", tenant_id=TENANT, key_sha256="0" * 64)
        free = KeyIssued(key_id="sy_free", tenant_id=FREE, key_sha256="0" * 64)
        deadline = time.monotonic() + 10
        while quota.book.applicable(TENANT, MODEL.model_id) is None:
            assert time.monotonic() < deadline, "limits never reached the gateway's book"
            await asyncio.sleep(0.01)

        def ask() -> Ask:
            return read_request("openai.chat", BODY).ask(8192, quota.estimator)

        async def unlimited() -> None:
            assert await quota.reserve(hold=uuid.uuid4().hex, key=free, model=MODEL, ask=ask()) is None

        async def direct() -> None:
            assert await quota.reserve(hold=uuid.uuid4().hex, key=key, model=MODEL, ask=ask()) is not None

        def planned(request_id: str) -> ReservePlan:
            scopes = quota.book.applicable(TENANT, MODEL.model_id)
            asked = ask()
            prompt, output = asked.prompt_tokens(), asked.output or 0
            nanos = usd_nanos(prompt, output, *quota.price(TENANT, MODEL))
            now = datetime.now(UTC)
            items = plan(quota.keys, scopes, quota.book.timezone(TENANT), TENANT, key.key_id, MODEL.model_id,
                         now, Estimate(prompt + output, nanos))
            return ReservePlan(request_id, int((now.timestamp() + 600) * 1000), [i.counter for i in items])

        async def via_nats() -> None:
            raw = await natsio.request(nc, subjects.QUOTA_RESERVE, encode(planned(uuid.uuid4().hex)), 5)
            assert _reply.decode(raw).ok

        async def estimate_and_plan() -> None:
            planned(uuid.uuid4().hex)

        async def valkey_round_trip() -> None:
            await quota.valkey.call("PING")

        script = planned("x")
        amounts = {"t": (60, 1), "r": (1, 0), "u": (usd_nanos(60, 0, *quota.price(TENANT, MODEL)),
                                                    quota.price(TENANT, MODEL)[1] * 1000)}
        script_keys, script_args = reserve_call(quota.keys, "", script.deadline_ms, script.counters, amounts, 64, 1)

        async def valkey_script() -> None:
            script_args[0] = uuid.uuid4().hex
            await quota.valkey.evalsha(RESERVE_SCRIPT.sha, RESERVE_SCRIPT.source, script_keys, script_args)

        paths = {"no limits (common case)": unlimited, "direct: Valkey Lua": direct, "via NATS quota service": via_nats,
                 "  part: estimate + plan": estimate_and_plan, "  part: Valkey PING round trip": valkey_round_trip,
                 "  part: the reserve script": valkey_script}
        results: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(2):                       # alternate, so drift on a shared machine hits every path
            for name, call in paths.items():
                await timed(warmup, call)
                results[name] += await timed(calls // 2, call)
        await quota.valkey.call("CONFIG", "RESETSTAT")
        await timed(calls, valkey_script)
        stats = (await quota.valkey.call("INFO", "commandstats")).decode()
        inside = next(line for line in stats.splitlines() if line.startswith("cmdstat_evalsha:"))
        results["  inside Valkey: the reserve script (server time)"] = [
            float(inside.split("usec_per_call=")[1].split(",")[0]) / 1e6]
        await quota.close()
        return results
    finally:
        await nc.close()


def _admin(stack: object, method: str, path: str, body: dict | None = None) -> dict:
    import json
    import urllib.request

    request = urllib.request.Request(f"{stack.gateway_url}{path}", method=method,  # type: ignore[attr-defined]
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {stack.admin_key}"})  # type: ignore[attr-defined]
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — loopback only
        return json.loads(response.read())


def through_gateway(calls: int, warmup: int) -> int:
    from benchmarks.load import SHAPES, Target, sequential
    from benchmarks.stack import Stack

    with Stack() as stack:
        keys = {}
        for tenant in ("bench-free", "bench-limited"):
            _admin(stack, "POST", "/api/admin/tenants", {"tenant_id": tenant})
            keys[tenant] = _admin(stack, "POST", f"/api/admin/tenants/{tenant}/keys", {"role": "member"})["key"]
        _admin(stack, "PUT", "/api/admin/tenants/bench-limited/limits",
               {"daily_tokens": 10**12, "monthly_tokens": 10**13, "budget_usd": 10.0**6, "rpm": 10**9})
        targets = [Target(name, stack.gateway_url, {"Authorization": f"Bearer {keys[tenant]}",
                                                    "Content-Type": "application/json"})
                   for name, tenant in (("no limits", "bench-free"), ("four limits", "bench-limited"))]
        results = uvloop.run(sequential(targets, SHAPES["chat"], calls, warmup))
        used = stack.get_json("/api/v1/tenant-models/quotas", keys["bench-limited"])["quotas"]
    print(f"Chat calls through the gateway, sequential, {calls} per tenant, alternating (microseconds)")
    p50 = {}
    for name, samples in results.items():
        print(f"  {name:<32} {percentiles(list(samples.total))}  ok {samples.ok}")
        p50[name] = sorted(samples.total)[len(samples.total) // 2] * 1e6
    print(f"  reservation adds (p50 difference)  {p50['four limits'] - p50['no limits']:7.1f}")
    if not any(q["used"] for q in used):
        print("  NOTE: the limited tenant's counters are empty: this gateway does not reserve yet")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quota", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="timed reservations per path (default: 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed reservations first (default: 300)")
    parser.add_argument("--through-gateway", action="store_true",
                        help="measure chat calls through `switchyard up --demo` with and without limits")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the machine to be idle (other processes)")
    args = parser.parse_args(argv)
    if args.wait_quiet:
        from benchmarks.cpu import wait_until_quiet
        print(f"cores busy before the run: {wait_until_quiet(0.3, args.wait_quiet)}")
    if args.through_gateway:
        return through_gateway(args.calls, args.warmup)
    root = Path(tempfile.mkdtemp(prefix="switchyard-bench-quota-"))
    root.chmod(0o755)
    quota_proc = None
    try:
        with EmbeddedStack(root / "stack", durable=False) as stack:
            urls = stack.urls
            prefix = f"bench{uuid.uuid4().hex[:6]}:"
            env = {**os.environ, "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_DATABASE_URL": urls.database_url,
                   "SWITCHYARD_REDIS_URL": urls.redis_url, "SWITCHYARD_PORT": str(pick_free_port(set())),
                   "SWITCHYARD_QUOTA_PREFIX": prefix, "SWITCHYARD_LOG_LEVEL": "warning"}
            quota_proc = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.services.quota"], env=env, cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=open(root / "quota.log", "wb"))
            settings = Settings(nats_url=urls.nats_url, redis_url=urls.redis_url, quota_prefix=prefix)
            results = uvloop.run(measure(settings, args.calls, args.warmup))
    finally:
        if quota_proc is not None:
            quota_proc.terminate()
            quota_proc.wait(20)
        shutil.rmtree(root, ignore_errors=True)
    print(f"Reservation cost per call, one at a time, {args.calls} calls per path (microseconds)")
    for name, samples in results.items():
        print(f"  {name:<32} {percentiles(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
