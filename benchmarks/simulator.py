"""Measure the simulator's throughput: an aiohttp client hammers a simulator subprocess.

    python -m benchmarks.simulator --seconds 3 --concurrency 32 --clients 2

Reports requests/s and the server's CPU time per request, read from /proc, so the rate
one server core could sustain is known even when the client is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import aiohttp

_HELLO = [{"role": "user", "content": "Say hello to the yard"}]
BODIES = {
    "chat": ("/v1/chat/completions", {"model": "llama3.2", "messages": _HELLO}),
    "ollama": ("/api/chat", {"model": "llama3.2", "messages": _HELLO, "stream": False}),
    "stream": ("/v1/chat/completions", {"model": "llama3.2", "messages": _HELLO, "stream": True}),
    "embed": ("/v1/embeddings", {"model": "nomic-embed-text", "input": "Say hello to the yard"}),
}


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _load(
    url: str, body: bytes, concurrency: int, seconds: float, pid: int
) -> dict[str, float]:
    """Warm up for half a second, then count replies for `seconds`."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": "application/json"}
    counts = {"ok": 0, "errors": 0}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(deadline: float) -> None:
            while time.monotonic() < deadline:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    counts["ok" if resp.status == 200 else "errors"] += 1

        warm_until = time.monotonic() + 0.5
        await asyncio.gather(*(worker(warm_until) for _ in range(concurrency)))
        counts.update(ok=0, errors=0)
        cpu_before, started = _cpu_seconds(pid), time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))
        elapsed, cpu = time.monotonic() - started, _cpu_seconds(pid) - cpu_before
    return {**counts, "elapsed": elapsed, "cpu": cpu}


def _client(url: str, body: bytes, concurrency: int, seconds: float, pid: int) -> dict[str, float]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_load(url, body, concurrency, seconds, pid))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_load(url, body, concurrency, seconds, pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.simulator", description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32, help="in-flight requests in all")
    parser.add_argument("--clients", type=int, default=1, help="client processes sharing them")
    parser.add_argument("--kind", choices=sorted(BODIES), default="chat")
    args = parser.parse_args(argv)
    server = subprocess.Popen(
        [sys.executable, "-m", "switchyard_gateway.simulator", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        base = server.stdout.readline().split(" on ", 1)[1].split()[0]
        path, payload = BODIES[args.kind]
        body = json.dumps(payload).encode()
        share = max(1, args.concurrency // args.clients)
        job = (base + path, body, share, args.seconds, server.pid)
        with ProcessPoolExecutor(args.clients) as pool:
            futures = [pool.submit(_client, *job) for _ in range(args.clients)]
            results = [f.result() for f in futures]
    finally:
        server.terminate()
        server.wait(timeout=10)
    ok = sum(r["ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    cpu = max(r["cpu"] for r in results)  # each client saw about the same window
    per_request_us = cpu / max(ok, 1) * 1e6
    print(
        f"{args.kind}: {ok / elapsed:,.0f} req/s, {share * args.clients} in flight from "
        f"{args.clients} client process(es), {errors} errors; server CPU "
        f"{per_request_us:.0f} us/request ({cpu / elapsed:.0%} of one core), "
        f"so about {1e6 / per_request_us:,.0f} req/s per server core"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
