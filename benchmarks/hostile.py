"""Benchmark what checking a call's numbers and holding its output to a ceiling add to the hot path, per door.

    python -m benchmarks.hostile [--rounds 20000]          # in this process, ~10 s

For a typical body of each API it times, in this process:
- `before`: the one decode the proxy did before (`InferenceRequest`: model, stream, stream_options);
- `read + ask`: the door's typed request (every count and range checked while decoding) and its `Ask`
  (the bounds that depend on the model), without counting the prompt (the reservation counted it before too);
- `ceiling`: the upstream body with the reservation's output ceiling written in, less the body without one;
- `rate headers`: OpenAI's rate-limit headers from four counters.
`added` is read + ask − before + ceiling + rate headers: what a call of a tenant with token limits now pays
in Python on top of what it paid. Also timed: watching the client for a disconnect, in this process (a
call answered within `edge.client.WATCH_AFTER_S` never starts watching; through granian, watching from
the start cost tens of microseconds per call, which is why).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec

from switchyard_gateway.contracts.quota import Limits
from switchyard_gateway.quotas.periods import Keys
from switchyard_gateway.quotas.plan import Estimate, plan
from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.edge.client import ClientWatch
from switchyard_gateway.services.gateway.pipeline.call import InferenceRequest
from switchyard_gateway.services.gateway.pipeline.quota_answers import rate_headers
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import Door

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write one sentence about railway switchyards and how trains are sorted."}]
BODIES: dict[str, tuple[str, dict]] = {
    "openai.chat": ("/v1/chat/completions", {"model": "llama3.2", "messages": MESSAGES, "max_tokens": 64,
                                             "temperature": 0.7, "stream": True}),
    "openai.completions": ("/v1/completions", {"model": "llama3.2", "prompt": "Railway switchyards sort",
                                               "max_tokens": 64, "n": 1}),
    "openai.embeddings": ("/v1/embeddings", {"model": "nomic-embed-text", "input": ["a freight train", "a yard"],
                                             "dimensions": 256}),
    "ollama.chat": ("/api/chat", {"model": "llama3.2", "messages": MESSAGES, "options": {"temperature": 0.7}}),
    "ollama.generate": ("/api/generate", {"model": "llama3.2", "prompt": "Railway switchyards sort",
                                          "options": {"num_predict": 64}}),
    "anthropic.messages": ("/v1/messages", {"model": "llama3.2", "max_tokens": 64, "system": "Be terse.",
                                            "messages": MESSAGES[1:]}),
}
_before = msgspec.json.Decoder(InferenceRequest).decode


def per_call_us(rounds: int, call: Callable[[], object]) -> float:
    """Median over 5 runs of the mean time per call, in microseconds."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(runs)


def door_figures(api: str, rounds: int, tokenizer: TokenEstimator) -> dict[str, float]:
    path, fields = BODIES[api]
    body = msgspec.json.encode(fields)
    kind = "openai-compatible"

    def read_and_ask() -> object:
        request = read_request(api, body)
        return Door(path, request, body).ask(8192, tokenizer)

    request = read_request(api, body)
    door = Door(path, request, body)
    door.ask(8192, tokenizer)
    request_plan = door.plan(kind).request
    figures = {
        "before": per_call_us(rounds, lambda: _before(body)),
        "read + ask": per_call_us(rounds, read_and_ask),
        "ceiling": 0.0 if api.endswith("embeddings") else max(0.0, per_call_us(
            rounds, lambda: request_plan(body, "llama3.2", 32)) - per_call_us(
            rounds, lambda: request_plan(body, "llama3.2", None))),
    }
    return figures


def headers_figure(rounds: int) -> float:
    limits = Limits(daily_tokens=10**9, monthly_tokens=10**10, rpm=10**6, tpm=10**8)
    planned = plan(Keys("b:"), (limits, Limits()), "UTC", "t", "k", "m", datetime.now(UTC), Estimate(0, 0))
    values = [1000, 2000, 3, 1000]
    now = time.time()
    return per_call_us(rounds, lambda: rate_headers(planned, values, now))


class _Proto:
    """Stands in for granian's protocol object: an awaitable that completes when the client leaves."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def client_disconnect(self) -> asyncio.Future[None]:
        return self.loop.create_future()


async def watch_figure(rounds: int) -> float:
    proto = _Proto(asyncio.get_running_loop())
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            watch = ClientWatch(proto, after_s=0.0)        # watching from the start: what a long call pays
            await asyncio.sleep(0)
            watch.stop()
        runs.append((time.perf_counter() - started) / rounds * 1e6)
    empty = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            await asyncio.sleep(0)
        empty.append((time.perf_counter() - started) / rounds * 1e6)
    return statistics.median(runs) - statistics.median(empty)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="calls per timing run (default: 20000)")
    args = parser.parse_args(argv)
    tokenizer = TokenEstimator()
    headers = headers_figure(args.rounds)
    print(f"Per call, median of 5 runs of {args.rounds} (microseconds)")
    print(f"  {'api':<20} {'before':>8} {'read+ask':>9} {'ceiling':>8} {'headers':>8} {'added':>7}")
    worst = 0.0
    for api in BODIES:
        f = door_figures(api, args.rounds, tokenizer)
        added = f["read + ask"] - f["before"] + f["ceiling"] + headers
        worst = max(worst, added)
        print(f"  {api:<20} {f['before']:8.2f} {f['read + ask']:9.2f} {f['ceiling']:8.2f} {headers:8.2f} "
              f"{added:7.2f}")
    print(f"  most added on any door: {worst:.2f} us (target: at most 20)")
    print(f"  watching the client for a disconnect, once started: {asyncio.run(watch_figure(args.rounds)):.2f} us")
    return 0 if worst <= 20 else 1


if __name__ == "__main__":
    sys.exit(main())
