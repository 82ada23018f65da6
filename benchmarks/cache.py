"""Benchmark the response cache: what a hit saves and what the cache adds to a call it cannot answer.

    python -m benchmarks.cache [--calls 2000] [--warmup 200] [--upstream-ms 0] [--wait-quiet 60]

Runs `switchyard up --demo --no-fsync` with `SWITCHYARD_CACHE=embeddings` and times sequential
embedding calls through the gateway, alternating call by call between three ways of sending the same
body (one keep-alive connection each):
- `no-store`: the cache is bypassed, the upstream answers (what a gateway with the cache off does);
- `no-cache`: the upstream answers and the answer is written back (a miss, without the lookup);
- `hit`: the answer comes from Valkey.
`--upstream-ms` sets the simulators' latency, to show a hit against a real model server's time.
"""

from __future__ import annotations

import argparse
import sys

import uvloop

from benchmarks.load import SHAPES, Target, sequential
from benchmarks.quota import percentiles
from benchmarks.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per way (default: 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per way first (default: 200)")
    parser.add_argument("--upstream-ms", type=float, default=0.0, help="simulator latency per call (default: 0)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the machine to be idle (other processes)")
    args = parser.parse_args(argv)
    if args.wait_quiet:
        from benchmarks.cpu import wait_until_quiet
        print(f"cores busy before the run: {wait_until_quiet(0.3, args.wait_quiet)}")
    with Stack(env={"SWITCHYARD_CACHE": "embeddings"}) as stack:
        for endpoint in stack.endpoints.values():
            stack.post_json(f"{endpoint.url}/_sim/config", {"latency_ms": args.upstream_ms})
        base = {"Authorization": f"Bearer {stack.demo_key}", "Content-Type": "application/json"}
        targets = [Target(name, stack.gateway_url, {**base, **extra}) for name, extra in (
            ("no-store (cache bypassed)", {"Cache-Control": "no-store"}),
            ("no-cache (upstream + write)", {"Cache-Control": "no-cache"}),
            ("hit", {}),
        )]
        results = uvloop.run(sequential(targets, SHAPES["embed"], args.calls, args.warmup))
    print(f"Embedding calls through the gateway, sequential, {args.calls} per way, upstream latency "
          f"{args.upstream_ms} ms (microseconds)")
    for name, samples in results.items():
        print(f"  {name:<30} {percentiles(list(samples.total))}  ok {samples.ok}  errors {dict(samples.errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
