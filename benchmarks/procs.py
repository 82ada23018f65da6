"""Split a throughput run across K load processes, start them together, and sum what they measured."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import queue
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace

from benchmarks.load import PoolJob, pool

_CTX = mp.get_context("spawn")  # a fresh interpreter: no event loop or sockets inherited


class LoadProcessFailed(RuntimeError):
    """A load process raised or died; carries its traceback or exit code."""


def shares(job: PoolJob, procs: int) -> list[PoolJob]:
    """The job cut into `procs` parts: connections and requests as even as integers allow."""
    procs = max(1, min(procs, job.concurrency))
    out = []
    for i in range(procs):
        conns = job.concurrency // procs + (i < job.concurrency % procs)
        reqs = job.requests // procs + (i < job.requests % procs) if job.requests else 0
        out.append(replace(job, concurrency=conns, requests=reqs))
    return out


async def run(job: PoolJob, procs: int, on_ready: Callable[[dict], Awaitable[None]], timeout_s: float = 900.0) -> dict:
    """Run `job` split across `procs` processes; `on_ready(warm)` runs after every warm-up, before the start.

    The result sums counts and CPU, spans the window from the first start to the last end,
    and joins every latency.
    """
    results: mp.Queue = _CTX.Queue()
    go = _CTX.Event()
    children = [_CTX.Process(target=_child, args=(part, results, go), daemon=True) for part in shares(job, procs)]
    for child in children:
        child.start()
    try:
        deadline = time.monotonic() + timeout_s
        ready = [await _next(results, children, deadline, "ready") for _ in children]
        warm = {"ok": sum(r["ok"] for r in ready), "errors": _sum_counts(r["errors"] for r in ready)}
        await on_ready(warm)
        go.set()
        done = [await _next(results, children, deadline, "done") for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
    latencies = array("d")
    for d in done:
        latencies.extend(d["latencies"])
    return {
        "warm": warm, "ok": sum(d["ok"] for d in done), "errors": _sum_counts(d["errors"] for d in done),
        "elapsed_s": max(d["ended"] for d in done) - min(d["started"] for d in done),
        "loadgen_cpu_s": sum(d["cpu_s"] for d in done), "latencies": latencies, "procs": len(children),
    }


async def _next(results: mp.Queue, children: list, deadline: float, kind: str) -> dict:
    """The next message of `kind` from a load process, polling so a dead process is noticed."""
    while True:
        try:
            got, payload = await asyncio.to_thread(results.get, True, 0.5)
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise LoadProcessFailed(f"load process {dead[0].pid} exited with {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"load processes sent no '{kind}' before the deadline") from None
            continue
        if got == "error":
            raise LoadProcessFailed(payload)
        if got == kind:
            return payload


def _sum_counts(counts: object) -> dict[str, int]:
    total: Counter = Counter()
    for c in counts:  # type: ignore[attr-defined]
        total.update(c)
    return dict(total)


def _child(job: PoolJob, results: mp.Queue, go: object) -> None:
    """A load process: its own uvloop, its share of the connections, reporting over `results`."""
    import uvloop

    async def gate(warm: dict) -> None:
        results.put(("ready", warm))
        await asyncio.to_thread(go.wait)  # type: ignore[attr-defined]

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results.put(("done", runner.run(pool(job, gate))))
    except BaseException:  # noqa: BLE001 — the parent reports it
        results.put(("error", traceback.format_exc()))
