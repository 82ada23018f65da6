"""Figures from samples (percentiles, added latency, CPU per call), machine facts, and the printed table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

PCTS = (50, 90, 99)


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile, linearly interpolated between the two nearest ranks (values need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_ms(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 and mean of seconds, in milliseconds."""
    out = {f"p{p}": round(percentile(values, p) * 1000, 3) for p in PCTS}
    out["mean"] = round(sum(values) / len(values) * 1000, 3) if values else float("nan")
    return out


def added(direct: dict[str, float], gateway: dict[str, float]) -> dict[str, float]:
    """Gateway minus direct, percentile by percentile."""
    return {k: round(gateway[k] - direct[k], 3) for k in direct}


def per_call_ms(cpu_s: dict[str, float], calls: int) -> dict[str, float]:
    """CPU milliseconds per call for every group."""
    return {k: round(v / calls * 1000, 4) if calls else float("nan") for k, v in sorted(cpu_s.items())}


def machine() -> dict:
    """Cores, CPU model, Python and library versions, the load before the run, and the code's commit."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import uvloop

    return {
        "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False), "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": sys.version.split()[0],
        "platform": platform.platform(), "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "busy_cores_before": round(psutil.cpu_percent(interval=1.0) / 100 * (os.cpu_count() or 1), 2),
        "commit": _commit(),
    }


def _commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{head}{'+uncommitted' if dirty else ''}"


def table(results: dict) -> str:
    """The results as a plain-text report."""
    m, cfg = results["machine"], results["config"]
    variant = cfg.get("variant", "light")
    lines = [
        f"Variant {variant}: " + ("a tenant with token and rate limits" if cfg.get("limits") else "no limits")
        + (", fsync on (PostgreSQL, Valkey, the gateway's journal)" if cfg.get("fsync") else ", fsync off")
        + f"; gateway workers: {cfg.get('workers', 1)}; HTTP server: {cfg.get('http_server', 'default')}",
        f"Switchyard benchmark: {m['logical_cores']} cores ({m['cpu_model']}), Python {m['python']}, "
        f"commit {m['commit']}",
        f"Before the run: load average {m['load_average_before']}, {m['busy_cores_before']} cores busy (other users)",
        f"One machine for load generator, simulator, gateway, services and infra. Load: {cfg['load_procs']} "
        f"process(es), aiohttp+uvloop; simulator knobs {cfg['sim_knobs']}",
        "",
        f"Sequential, one keep-alive connection per target, {cfg['sequential']} calls each after "
        f"{cfg['warmup']} warm-up, alternating targets (ms)",
        f"  {'':26}{'p50':>8}{'p90':>8}{'p99':>8}{'mean':>8}",
    ]
    seq_noise = ", ".join(f"{k} {v['other_cores']}" for k, v in results["sequential"].items())
    for kind, label in (("chat", "chat total"), ("stream", "stream TTFB")):
        seq = results["sequential"].get(kind, {})
        for row in ("direct", "gateway", "added", "portkey", "added_portkey"):
            if row not in seq:
                continue
            v = seq[row]
            lines.append(f"  {label + ' ' + row:26}{v['p50']:8.3f}{v['p90']:8.3f}{v['p99']:8.3f}{v['mean']:8.3f}")
    seq_cpu = ", ".join(f"{k} {v['gateway_cpu_ms_per_call']['gateway']} ms (all Switchyard "
                        f"{v['gateway_cpu_ms_per_call']['switchyard_total']} ms)" for k, v in results["sequential"].items()
                        if "gateway_cpu_ms_per_call" in v)
    if seq_cpu:
        lines.append(f"  gateway CPU per gateway call: {seq_cpu}")
    lines.append(f"  cores used by other processes meanwhile: {seq_noise}")
    lines += [
        "",
        f"Throughput, {cfg['concurrency']} keep-alive connections; cores = CPU s / wall s of the run "
        "(other = machine CPU outside the stack and the load generator; drain = wait for the usage log)",
        f"  {'':15}{'calls':>7}{'err':>5}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'machine':>8}{'loadgen':>8}"
        f"{'gateway':>8}{'all sy':>8}{'sim':>6}{'infra':>6}{'other':>6}{'drain s':>8}",
    ]
    for run in results["throughput"]:
        lines.append(
            f"  {run['kind'] + ' ' + run['target']:15}{run['ok']:7d}{sum(run['errors'].values()):5d}"
            f"{run['rps']:8.0f}{run['latency_ms']['p50']:8.2f}{run['latency_ms']['p99']:8.2f}"
            f"{run['busy_cores']:8.2f}{run['loadgen_cores']:8.2f}{run['gateway_cores']:8.2f}"
            f"{run['switchyard_cores']:8.2f}{run['sim_cores']:6.2f}{run['infra_cores']:6.2f}{run['other_cores']:6.2f}"
            f"{run['usage_drain_s']:8.2f}"
        )
    lines += [
        "",
        "CPU ms per call, by process (gw = the gateway's processes, for a portkey row Portkey's; sy = every Switchyard process: gateway, router,"
        " metering, quota, registry, launcher; stack = sy + NATS + PostgreSQL + Valkey; the usage log's catching up"
        " after a run is included)",
        "  cap 1gw / cap all = req/s that CPU cost allows with one core for the gateway / every core for the stack "
        "and load generator and nothing else running (derived, not measured)",
        f"  {'':15}" + "".join(f"{h:>7}" for h in ("gw", "router", "meter", "quota", "reg", "sy", "nats", "pg",
                                                   "valkey", "stack", "sim", "load"))
        + f"{'cap 1gw':>9}{'cap all':>9}",
    ]
    for run in results["throughput"]:
        c = run["cpu_ms_per_call"]
        caps = [run["ceiling_rps_one_gateway_core"], run["ceiling_rps_all_cores"]]
        cells = [c.get(k, 0.0) for k in ("gateway", "router", "metering", "quota", "registry", "switchyard_total",
                                          "nats", "postgres", "valkey")]
        cells += [c.get("switchyard_total", 0.0) + c.get("infra_total", 0.0), c.get("sims_total", 0.0),
                  c.get("loadgen", 0.0)]
        lines.append(f"  {run['kind'] + ' ' + run['target']:15}" + "".join(f"{x:7.3f}" for x in cells)
                     + "".join(f"{'-' if x is None else x:>9}" for x in caps))
    busy_others = [(run, o) for run in results["throughput"] for o in run["other_busiest"][:1]]
    if busy_others:
        lines += ["", "Busiest process outside the benchmark, per run:"]
        lines += [f"  {run['kind'] + ' ' + run['target']:15}{o['cpu_s']:6.2f} s  {o['process']}" for run, o in busy_others]
    acc = results["accounting"]
    lines += [
        "",
        f"Accounting: {acc['gateway_calls_200']} gateway calls returned 200; {acc['usage_events']} usage.recorded.v2 "
        f"events ({acc['distinct_request_ids']} distinct request ids) after {acc['waited_s']:.1f} s -> "
        f"{'MATCH' if acc['match'] else 'MISMATCH'}; gateway-reported overhead_ms p50 "
        f"{acc['gateway_reported_overhead_ms']['p50']} p99 {acc['gateway_reported_overhead_ms']['p99']}",
    ]
    return "\n".join(lines)
