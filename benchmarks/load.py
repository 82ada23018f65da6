"""The load generator's client side: request shapes, timed sequential calls, and a pool of keep-alive workers."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp


class Shape(NamedTuple):
    """One kind of call: where it goes, what it sends, whether the reply is an SSE stream."""

    path: str
    body: bytes
    stream: bool


SHAPES = {
    "chat": Shape("/v1/chat/completions", b'{"model":"llama3.2","messages":[{"role":"user","content":"Say hello to the yard"}]}', False),
    "stream": Shape("/v1/chat/completions", b'{"model":"llama3.2","stream":true,"messages":[{"role":"user","content":"Say hello to the yard"}]}', True),
    "embed": Shape("/v1/embeddings", b'{"model":"nomic-embed-text","input":"Say hello to the yard"}', False),
}  # fmt: skip

TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True)
class Target:
    """Where calls go: the gateway (with the demo key) or a simulator directly."""

    name: str
    base_url: str
    headers: dict[str, str]

    def url(self, shape: Shape) -> str:
        return self.base_url + shape.path


@dataclass
class Samples:
    """What sequential calls to one target measured, in seconds."""

    total: array = field(default_factory=lambda: array("d"))
    ttfb: array = field(default_factory=lambda: array("d"))
    ok: int = 0
    errors: Counter = field(default_factory=Counter)


async def timed_call(session: aiohttp.ClientSession, url: str, shape: Shape, headers: dict[str, str]) -> tuple[int, float, float]:
    """(status, seconds to the first SSE data chunk (streams) or 0, seconds to the end of the reply)."""
    started = time.perf_counter()
    first = 0.0
    async with session.post(url, data=shape.body, headers=headers) as resp:
        if shape.stream and resp.status == 200:
            tail = b""
            async for chunk in resp.content.iter_any():
                if not first:
                    tail = tail[-5:] + chunk
                    if b"data:" in tail:
                        first = time.perf_counter() - started
        else:
            await resp.read()
        return resp.status, first, time.perf_counter() - started


async def sequential(targets: list[Target], shape: Shape, calls: int, warmup: int) -> dict[str, Samples]:
    """Call each target `warmup + calls` times, one call in flight, alternating targets call by call.

    Each target has one keep-alive connection. Alternating spreads any drift in the machine's
    load (other processes, CPU frequency) over both targets alike.
    """
    samples = {t.name: Samples() for t in targets}
    sessions = {t.name: _session(1) for t in targets}
    try:
        for i in range(warmup + calls):
            order = targets if i % 2 == 0 else targets[::-1]
            for target in order:
                s = samples[target.name]
                try:
                    status, first, total = await timed_call(sessions[target.name], target.url(shape), shape, target.headers)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    s.errors[type(exc).__name__] += 1
                    continue
                if status != 200:
                    s.errors[str(status)] += 1
                    continue
                s.ok += 1
                if i >= warmup:
                    s.total.append(total)
                    if shape.stream:
                        s.ttfb.append(first)
    finally:
        for session in sessions.values():
            await session.close()
    return samples


@dataclass(frozen=True)
class PoolJob:
    """One load process's share of a throughput run (picklable, sent to the process)."""

    url: str
    headers: dict[str, str]
    shape: str  # a key of SHAPES
    concurrency: int
    requests: int  # 0 with `seconds` set: run for a fixed time
    seconds: float
    warmup_per_conn: int


async def pool(job: PoolJob, gate: Callable[[dict], Awaitable[None]]) -> dict:
    """Warm every connection, await `gate` (all load processes ready), then run the job's calls.

    Returns counts, the window's start and end (time.monotonic, comparable across processes),
    this process's CPU seconds in the window, and every call's latency.
    """
    shape = SHAPES[job.shape]
    left = [job.requests]
    ok, errors, lat = [0], Counter(), array("d")
    deadline = [0.0]

    async def call(session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        try:
            async with session.post(job.url, data=shape.body, headers=job.headers) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            return
        lat.append(time.perf_counter() - started)
        if status == 200:
            ok[0] += 1
        else:
            errors[str(status)] += 1

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            if job.requests:
                if left[0] <= 0:
                    return
                left[0] -= 1
            elif time.monotonic() >= deadline[0]:
                return
            await call(session)

    async with _session(job.concurrency) as session:
        for _ in range(job.warmup_per_conn):
            await asyncio.gather(*(call(session) for _ in range(job.concurrency)))
        warm = {"ok": ok[0], "errors": dict(errors)}
        ok[0] = 0
        del lat[:]
        errors.clear()
        await gate(warm)
        cpu_before, started = time.process_time(), time.monotonic()
        deadline[0] = started + job.seconds
        await asyncio.gather(*(worker(session) for _ in range(job.concurrency)))
        ended, cpu = time.monotonic(), time.process_time() - cpu_before
    return {"warm": warm, "ok": ok[0], "errors": dict(errors), "started": started, "ended": ended,
            "cpu_s": cpu, "latencies": lat}


def _session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=TIMEOUT, skip_auto_headers=("User-Agent",))
