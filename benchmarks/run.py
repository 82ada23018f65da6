"""Benchmark the gateway against the same upstream simulator called directly, on one machine.

    python -m benchmarks.run [--variant policy|no-limits|no-fsync|light] [--quick] [--out PATH] [--requests N]
                             [--concurrency 32] [--load-procs K] [--workers N] [--http-server native|granian]
                             [--replicas gateway=2]

Starts `switchyard up --demo` on a fresh data dir and a free port, then measures added latency
and time to first byte (sequential calls), throughput and CPU per call by process (N keep-alive
connections) for chat, streamed chat and embeddings, and checks that the usage log holds one
event per gateway call. Prints a table and writes every figure as JSON.

By default every call takes the policy path, as `switchyard up` offers it in production: the
demo tenant has token and rate limits (each call authenticated, reserved in Valkey, metered
through NATS into PostgreSQL), PostgreSQL and Valkey flush their writes, and the gateway's
journal fdatasyncs (`--journal-fsync`). The lighter paths are named variants.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import sys
import time
from pathlib import Path

import uvloop

from benchmarks.cpu import wait_until_quiet
from benchmarks.phases import DIRECT_ENDPOINT, SIM_KNOBS, Bench, say
from benchmarks.portkey import VERSION as PORTKEY_VERSION
from benchmarks.portkey import Portkey
from benchmarks.report import machine, table
from benchmarks.stack import Stack

DEFAULT_OUT = Path("benchmarks/results/latest.json")
# Limits no run reaches, so every call is reserved and settled but none refused.
POLICY_LIMITS = {"daily_tokens": 10**12, "monthly_tokens": 10**13, "rpm": 10**9, "tpm": 10**12}
VARIANTS = {  # name: (limits on the demo tenant, PostgreSQL/Valkey fsync and the journal's fdatasync)
    "policy": (True, True),
    "no-limits": (False, True),
    "no-fsync": (True, False),
    "light": (False, False),      # what this benchmark measured before the policy path was its default
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="policy",
                        help="policy (default): a tenant with token and rate limits, fsync on; no-limits; no-fsync; "
                             "light: neither")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="gateway workers, passed to `switchyard up --gateway-workers` (default: its default)")
    parser.add_argument("--http-server", choices=["native", "granian"], default=None,
                        help="the gateway's HTTP server (SWITCHYARD_HTTP_SERVER; default: the gateway's default)")
    parser.add_argument("--venv", type=Path, default=None,
                        help="run the stack from this virtualenv (another checkout's code), measured by this harness")
    parser.add_argument("--compare", choices=["portkey"], default=None,
                        help="also measure Portkey's gateway (installed from npm, started here) in front of the same "
                             "simulator, in the same run")
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke test (< 60 s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results (default: %(default)s)")
    parser.add_argument("--requests", type=int, help="non-streamed chat calls per throughput run; streams run "
                        "a quarter of it, embeddings half (default: 20000, quick: 1000)")
    parser.add_argument("--seconds", type=float, help="run each throughput run for this long instead of a count")
    parser.add_argument("--sequential", type=int, help="sequential calls per target, 0 for none (default: 2000, quick: 300)")
    parser.add_argument("--warmup", type=int, help="sequential warm-up calls per target (default: 200, quick: 50)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections in the throughput runs (default: 32)")
    parser.add_argument("--load-procs", type=int, default=1, help="processes sharing the load (default: 1)")
    parser.add_argument("--kinds", default="chat,stream,embed", help="throughput runs, comma-separated; \"\" for none")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared machine, first wait up to this long for it to be nearly idle")
    parser.add_argument("--keep-data", action="store_true", help="keep the stack's data dir (logs) afterwards")
    parser.add_argument("--replicas", default="", metavar="SERVICE=N,...",
                        help="passed to `switchyard up --replicas` (e.g. gateway=2: two gateways on one port)")
    parser.add_argument("--nats-cluster", type=int, default=1, metavar="N", help="passed to `switchyard up`")
    parser.add_argument("--caps", type=int, default=0, metavar="N",
                        help="set a per-model concurrency cap of N on every endpoint before measuring (0: none)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests if args.requests is not None else (1000 if quick else 20_000)
    args.sequential = args.sequential if args.sequential is not None else (300 if quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (50 if quick else 200)
    args.warmup_per_conn = 1 if quick else 5
    return args


async def bench(args: argparse.Namespace, stack: Stack, other: Portkey | None = None) -> dict:
    """Every phase, in order; the figures as one JSON-ready dict."""
    b = await Bench.open(stack)
    if other is not None:
        b.other, b.other_cpu = other.target(), other.cpu_s
    try:
        sequential = {kind: await b.sequential(kind, args.sequential, args.warmup) for kind in ("chat", "stream")} \
            if args.sequential else {}
        counts = {"chat": args.requests, "stream": max(1, args.requests // 4), "embed": max(1, args.requests // 2)}
        for kind in [k for k in args.kinds.split(",") if k]:
            for target in (b.direct, b.gateway, *([b.other] if b.other is not None else [])):
                requests = 0 if args.seconds else counts[kind]
                await b.run_throughput(kind, target, args.concurrency, requests, args.seconds or 0.0,
                                       args.load_procs, args.warmup_per_conn)
        say("accounting: waiting for the usage log")
        accounting = await b.accounting()
        members = b.tree.members()
    finally:
        await b.close()
    return {"sequential": sequential, "throughput": b.throughput, "accounting": accounting,
            "processes": members, "endpoints": {e.id: vars(e) for e in stack.endpoints.values()},
            "direct_endpoint": b.direct.base_url}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the stack on SIGTERM as on Ctrl-C
    if args.wait_quiet:
        say(f"waiting up to {args.wait_quiet:g} s for the machine to be quiet")
        say(f"  {wait_until_quiet(0.3, args.wait_quiet)} cores busy")
    started = time.time()
    info = machine()
    limits, fsync = VARIANTS[args.variant]
    config = {"variant": args.variant, "venv": str(args.venv) if args.venv else None, "limits": POLICY_LIMITS if limits else None, "fsync": fsync,
              "workers": args.workers or "default", "http_server": args.http_server or "default", "quick": args.quick, "sequential": args.sequential, "warmup": args.warmup,
              "requests": args.requests, "seconds": args.seconds, "concurrency": args.concurrency,
              "load_procs": args.load_procs, "caps": args.caps, "replicas": args.replicas,
              "nats_cluster": args.nats_cluster, "compare": args.compare, "wait_quiet_s": args.wait_quiet, "warmup_per_conn": args.warmup_per_conn, "sim_knobs": SIM_KNOBS}
    try:
        up_args = [*(["--replicas", args.replicas] if args.replicas else []),
                   *(["--gateway-workers", str(args.workers)] if args.workers else []),
                   *(["--nats-cluster", str(args.nats_cluster)] if args.nats_cluster != 1 else [])]
        say(f"variant {args.variant}: starting switchyard up --demo{'' if fsync else ' --no-fsync'}"
            f"{' --journal-fsync' if fsync else ''} {shlex.join(up_args)}")
        with Stack(keep_data=args.keep_data, up_args=up_args, fsync=fsync, journal_fsync=fsync, venv=args.venv,
                   env={"SWITCHYARD_HTTP_SERVER": args.http_server} if args.http_server else {}) as stack:
            say(f"stack up on {stack.gateway_url} (data dir {stack.data_dir})")
            if limits:
                say(f"limits on the demo tenant: {POLICY_LIMITS}")
                stack.admin("PUT", "/api/admin/tenants/demo/limits", POLICY_LIMITS)
            if args.caps:
                say(f"capping every endpoint at {args.caps} concurrent calls per model")
                stack.set_caps(args.caps)
            with contextlib.ExitStack() as others:
                other = None
                if args.compare == "portkey":
                    direct = next(e.url for e in stack.endpoints.values() if e.id == DIRECT_ENDPOINT)
                    other = others.enter_context(Portkey(direct))
                    say(f"Portkey {PORTKEY_VERSION} on {other.url}, in front of {direct}")
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    figures = runner.run(bench(args, stack, other))
            stack_command = shlex.join(stack.command)
            say("stopping the stack")
    except KeyboardInterrupt:
        say("interrupted; the stack is stopped")
        return 130
    results = {
        "command": shlex.join([Path(sys.executable).name, "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]),
        "stack_command": stack_command, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1), "machine": info, "config": config, **figures,
    }
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    say(f"wrote {args.out}")
    return 0 if results["accounting"]["match"] else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _jsonable(value: object) -> object:
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
