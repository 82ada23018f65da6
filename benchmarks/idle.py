"""Benchmark an idle stack: the CPU every process of `switchyard up --demo` uses when nobody calls it.

    python -m benchmarks.idle [--settle 20] [--seconds 60] [--json PATH]

Starts `switchyard up --demo` (fresh data dir, its own NATS, PostgreSQL and Valkey), waits for it to
be ready and then `--settle` seconds more (start-up work, first probes, the first autovacuum look),
then measures every process of the tree for `--seconds`: user + system CPU of each group (a
service and its granian worker; nats-server; the postmaster and its backends; valkey-server; each
simulator; the launcher), as a share of one core. What the probes, leases and heartbeats cost at
their interval is in the figure; anything that spins shows as a group far above the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil

from benchmarks.cpu import ProcessTree, delta
from benchmarks.stack import Stack

TOTALS = ("switchyard_total", "infra_total", "sims_total")


def measure(seconds: float, settle_s: float) -> dict:
    """Start a demo stack, let it settle, and return each group's share of one core over `seconds`."""
    with Stack() as stack:
        assert stack.process is not None
        sims = {int(e.url.rsplit(":", 1)[1].split("/")[0]): e.id for e in stack.endpoints.values()}
        tree = ProcessTree(stack.process.pid, sims)
        time.sleep(settle_s)            # a benchmark's settling period, not a wait for a condition
        wakeups_before = _context_switches(tree)
        before, started = tree.snapshot(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = tree.snapshot(), time.monotonic() - started
        wakeups = {name: round((n - wakeups_before.get(name, 0)) / elapsed, 1)
                   for name, n in _context_switches(tree).items()}
        members = tree.members()
    used = delta(before, after)
    machine = used.pop("machine_busy")
    share = {name: round(100 * cpu / elapsed, 3) for name, cpu in sorted(used.items())}
    return {
        "seconds": round(elapsed, 1),
        "percent_of_one_core": share,
        "total_percent_of_one_core": round(sum(share[name] for name in TOTALS), 3),
        "wakeups_per_s": wakeups,
        "machine_busy_cores": round(machine / elapsed, 2),
        "processes": {name: len(pids) for name, pids in members.items()},
    }


def _context_switches(tree: ProcessTree) -> dict[str, int]:
    """Voluntary context switches per group so far: each is the process going to sleep after a wake-up."""
    out: dict[str, int] = {}
    for name, labels in tree.members().items():
        for label in labels:
            try:
                out[name] = out.get(name, 0) + psutil.Process(int(label.split()[0])).num_ctx_switches().voluntary
            except psutil.Error:
                continue
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to wait after ready (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(args.seconds, args.settle)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    total = result["total_percent_of_one_core"]
    print(f"idle: {total:.2f} % of one core for the whole stack over {result['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
