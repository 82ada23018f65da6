"""The benchmark's phases against a running stack: sequential latency and TTFB, throughput with CPU, accounting."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import procs
from benchmarks.accounting import UsageLog
from benchmarks.cpu import ProcessTree, busiest_others, delta, every_process
from benchmarks.load import SHAPES, PoolJob, Target, sequential
from benchmarks.report import added, latency_ms, per_call_ms
from benchmarks.stack import Stack

SIM_KNOBS = {"latency_ms": 0, "tokens": 16, "token_interval_ms": 0, "failure_rate": 0}
DIRECT_ENDPOINT = "ollama-1"  # the higher priority: where the gateway routes


@dataclass
class Bench:
    """Runs every phase against `stack`, keeping the tally of gateway calls that returned 200."""

    stack: Stack
    usage: UsageLog
    tree: ProcessTree
    direct: Target
    gateway: Target
    sim_urls: dict[str, str]
    gateway_ok: int = 0
    usage_base: int = 0
    throughput: list[dict] = field(default_factory=list)
    other: Target | None = None                   # another gateway in front of the same simulator (Portkey)
    other_cpu: Callable[[], float] | None = None   # its process's CPU seconds so far

    @classmethod
    async def open(cls, stack: Stack) -> Bench:
        """Set both simulators' knobs, connect to the event log, and note its usage count so far."""
        sim_urls = {e.id: e.url for e in stack.endpoints.values()}
        for url in sim_urls.values():
            stack.post_json(url + "/_sim/config", SIM_KNOBS)
        ports = {int(url.rsplit(":", 1)[1]): name for name, url in sim_urls.items()}
        assert stack.process is not None
        json_header = {"Content-Type": "application/json"}
        bench = cls(
            stack=stack, usage=await UsageLog.connect(stack.database_url), tree=ProcessTree(stack.process.pid, ports),
            direct=Target("direct", sim_urls[DIRECT_ENDPOINT], json_header),
            gateway=Target("gateway", stack.gateway_url, {**json_header, "Authorization": f"Bearer {stack.demo_key}"}),
            sim_urls=sim_urls,
        )
        bench.usage_base = await bench.usage.count()
        return bench

    async def close(self) -> None:
        await self.usage.close()

    async def sequential(self, kind: str, calls: int, warmup: int) -> dict:
        """Latency (chat) or time to first SSE data chunk (stream), direct and via the gateway."""
        say(f"sequential {kind}: {calls} calls per target after {warmup} warm-up")
        before, own_before, t0 = self.tree.snapshot(), time.process_time(), time.monotonic()
        targets = [self.direct, self.gateway, *([self.other] if self.other is not None else [])]
        samples = await sequential(targets, SHAPES[kind], calls, warmup)
        cpu, own, wall = delta(before, self.tree.snapshot()), time.process_time() - own_before, time.monotonic() - t0
        self.gateway_ok += samples["gateway"].ok
        pick = (lambda s: s.ttfb) if SHAPES[kind].stream else (lambda s: s.total)
        d, g = latency_ms(pick(samples["direct"])), latency_ms(pick(samples["gateway"]))
        out = {"metric": "ttfb" if SHAPES[kind].stream else "total", "calls": calls, "warmup": warmup,
               "direct": d, "gateway": g, "added": added(d, g),
               "errors": {name: dict(s.errors) for name, s in samples.items()},
               "gateway_cpu_ms_per_call": {  # every gateway call of the phase, warm-up included
                   group: round(cpu[group] / (warmup + calls) * 1000, 3)
                   for group in ("gateway", "router", "quota", "metering", "switchyard_total", "infra_total")},
               "busy_cores": round(cpu["machine_busy"] / wall, 2),
               "other_cores": round(max(0.0, cpu["machine_busy"] - _ours(cpu) - own) / wall, 2)}
        if self.other is not None:
            o = latency_ms(pick(samples[self.other.name]))
            out[self.other.name] = o
            out[f"added_{self.other.name}"] = added(d, o)
        if SHAPES[kind].stream:
            out["total"] = {name: latency_ms(s.total) for name, s in samples.items()}
        return out

    async def run_throughput(self, kind: str, target: Target, concurrency: int, requests: int, seconds: float,
                             load_procs: int, warmup_per_conn: int) -> dict:
        """One throughput run; CPU is counted from the start until the usage log has caught up."""
        say(f"throughput {kind} {target.name}: {requests or f'{seconds:g} s of'} calls, {concurrency} connections")
        via_gateway = target is self.gateway
        job = PoolJob(url=target.url(SHAPES[kind]), headers=target.headers, shape=kind, concurrency=concurrency,
                      requests=requests, seconds=seconds, warmup_per_conn=warmup_per_conn)
        marks: dict = {}

        async def on_ready(warm: dict) -> None:
            if via_gateway:
                self.gateway_ok += warm["ok"]
            await self.usage.wait_for(self.usage_base + self.gateway_ok, timeout_s=30.0)  # no backlog in the window
            marks["sims"] = self.sim_stats()
            marks["all"] = every_process()
            marks["cpu"], marks["t"] = self.tree.snapshot(), time.monotonic()
            marks["other"] = self.other_cpu() if self.other_cpu is not None else 0.0

        result = await procs.run(job, load_procs, on_ready)
        window, window_s = delta(marks["cpu"], self.tree.snapshot()), time.monotonic() - marks["t"]
        drain_s, events = 0.0, None
        if via_gateway:
            self.gateway_ok += result["ok"]
            events, drain_s = await self.usage.wait_for(self.usage_base + self.gateway_ok)
        cpu_s = delta(marks["cpu"], self.tree.snapshot())  # the window plus the usage log catching up
        cpu_s["loadgen"] = result["loadgen_cpu_s"]
        if self.other is not None and target is self.other and self.other_cpu is not None:
            cpu_s["gateway"] = self.other_cpu() - marks["other"]   # the gateway under test: the other one's process
            window["gateway"] = cpu_s["gateway"]
        others = busiest_others(marks["all"], every_process(), self.tree.pids() | {os.getpid()})
        ours = _ours(window) + result["loadgen_cpu_s"]
        per_call = per_call_ms(cpu_s, result["ok"])
        stack_ms = _ours(per_call) + per_call["loadgen"]
        sims_after = self.sim_stats()
        run = {
            "kind": kind, "target": target.name, "concurrency": concurrency, "load_procs": result["procs"],
            "ok": result["ok"], "errors": result["errors"], "warmup": result["warm"],
            "elapsed_s": round(result["elapsed_s"], 3), "rps": result["ok"] / result["elapsed_s"],
            "latency_ms": latency_ms(result["latencies"]),
            "usage_drain_s": round(drain_s, 3), "usage_events_after": events,
            "sim_requests": {n: sims_after[n] - marks["sims"][n] for n in sims_after},
            "cpu_s": {k: round(v, 3) for k, v in sorted(cpu_s.items())},
            "cpu_ms_per_call": per_call,
            # Derived, not measured: the rates the CPU cost per call allows if nothing else ran.
            "ceiling_rps_one_gateway_core": round(1000 / per_call["gateway"]) if result["ok"] and per_call.get("gateway") else None,
            "ceiling_rps_all_cores": round((os.cpu_count() or 1) * 1000 / stack_ms) if result["ok"] and stack_ms else None,
            "window_cpu_s": {k: round(v, 3) for k, v in sorted(window.items())},
            "other_busiest": others,
            "window_s": round(window_s, 3),
            "busy_cores": round(window["machine_busy"] / window_s, 2),
            "other_cores": round(max(0.0, window["machine_busy"] - ours) / window_s, 2),
            "loadgen_cores": round(result["loadgen_cpu_s"] / result["elapsed_s"], 2),
            "gateway_cores": round(window.get("gateway", 0.0) / window_s, 2),
            "switchyard_cores": round(window["switchyard_total"] / window_s, 2),
            "sim_cores": round(window["sims_total"] / window_s, 2),
            "infra_cores": round(window["infra_total"] / window_s, 2),
        }
        run["rps"] = round(run["rps"], 1)
        self.throughput.append(run)
        say(f"  -> {run['rps']:.0f} req/s, {sum(run['errors'].values())} errors, busy {run['busy_cores']} cores")
        return run

    async def accounting(self) -> dict:
        """Wait for the usage log to hold one event per 200 the gateway returned; report both numbers."""
        expected = self.usage_base + self.gateway_ok
        count, waited = await self.usage.wait_for(expected)
        summary = await self.usage.summary()
        return {
            "gateway_calls_200": self.gateway_ok, "usage_events": count - self.usage_base,
            "events_before_benchmark": self.usage_base, "match": count == expected, "waited_s": round(waited, 3),
            **{k: v for k, v in summary.items() if k != "events"},
        }

    def sim_stats(self) -> dict[str, int]:
        """Requests each simulator has served so far."""
        return {name: self.stack.get_json("/_sim/stats", base=url)["total"] for name, url in self.sim_urls.items()}


def _ours(cpu: dict[str, float]) -> float:
    """The stack's share of `cpu`: Switchyard, infrastructure and simulators."""
    return cpu["switchyard_total"] + cpu["infra_total"] + cpu["sims_total"]


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)
