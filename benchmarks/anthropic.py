"""Benchmark the Anthropic door: the CPU its translations take, and what a `/v1/messages` call adds over a chat call.
(The translations of the Ollama door's `/api/chat` and the Responses door are timed beside it.)

    python -m benchmarks.anthropic [--rounds 2000]                                   # translations only, ~5 s
    python -m benchmarks.anthropic --through-gateway [--calls 2000] [--wait-quiet 60]  # + `up --demo`, ~1 min

The first part times, in this process, the door's work on a typical call (a system prompt, three
messages, one tool): reading and checking the request and writing the upstream body, translating a
whole answer, and translating a 16-token stream, for each endpoint kind.

With `--through-gateway` it also starts `switchyard up --demo --no-fsync` and sends sequential calls on
keep-alive connections, alternating call by call: OpenAI chat straight to the simulator and through the
gateway, and the same prompt as an Anthropic message through the gateway (translated to the demo's
Ollama endpoint's `/api/chat`) beside that `/api/chat` call straight to the simulator; added latency =
through the gateway − direct. Streamed, it compares the two doors through the gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import aiohttp
import uvloop

from benchmarks.load import Shape, Target, timed_call
from benchmarks.quota import percentiles
from benchmarks.stack import Stack
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.doors import APIS, Door
from switchyard_gateway.services.gateway.translate.wire import Times

PROMPT = "Say hello to the yard"
TOOL = {"name": "get_weather", "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
MESSAGES = {"model": "llama3.2", "max_tokens": 64, "system": "You are terse.", "tools": [TOOL], "messages": [
    {"role": "user", "content": "What is the weather in Oslo?"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                       "input": {"city": "Oslo"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C, snow"}]}]}
WORDS = [" token"] * 16


def _openai_answer() -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 1, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 16, "total_tokens": 56}}).encode()


def _ollama_answer() -> bytes:
    return json.dumps({"model": "m", "created_at": "2025-01-01T00:00:00Z", "message": {
        "role": "assistant", "content": "".join(WORDS)}, "done": True, "done_reason": "stop",
        "prompt_eval_count": 40, "eval_count": 16}).encode()


def _openai_stream() -> list[bytes]:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in WORDS]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 16}})
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def _ollama_stream() -> list[bytes]:
    lines = [{"model": "m", "message": {"role": "assistant", "content": w}, "done": False} for w in WORDS]
    lines.append({"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                  "done_reason": "stop", "prompt_eval_count": 40, "eval_count": 16})
    return [json.dumps(line).encode() + b"\n" for line in lines]


def _per_call_us(work: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            work()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def translations(rounds: int) -> None:
    body = json.dumps(MESSAGES).encode()
    streamed = json.dumps({**MESSAGES, "stream": True}).encode()
    print(f"Anthropic door, in process, best of 5 x {rounds} calls (microseconds per call)")
    for kind, answer, chunks in (("openai-compatible", _openai_answer(), _openai_stream()),
                                 ("ollama", _ollama_answer(), _ollama_stream())):
        _door_row(kind, "/v1/messages", body, streamed, answer, chunks, rounds)
    print("The other translating doors, from an OpenAI-compatible server")
    for path, asked in (("/api/chat", {"model": "llama3.2", "messages": MESSAGES["messages"][:1]}),
                        ("/v1/responses", {"model": "llama3.2", "instructions": "You are terse.",
                                           "input": "What is the weather in Oslo?", "max_output_tokens": 64})):
        _door_row(path, path, json.dumps({**asked, "stream": False}).encode(),
                  json.dumps({**asked, "stream": True}).encode(), _openai_answer(), _openai_stream(), rounds)


def _door_row(label: str, path: str, body: bytes, streamed: bytes, answer: bytes, chunks: list[bytes],
              rounds: int) -> None:
    """One door's request, whole answer and 16-token stream to one kind of endpoint (`label`: the kind, or the
    path, whose endpoint is OpenAI-compatible), each as the gateway runs it: the door read from the body."""
    kind = label if not label.startswith("/") else "openai-compatible"

    def door(raw: bytes) -> Door:
        return Door(path, read_request(APIS[path], raw), raw)

    def request() -> object:
        return door(body).plan(kind).request(body, "llama3.2")

    plan = door(body).plan(kind)
    assert plan.answer is not None

    def whole() -> object:
        return plan.answer(answer, "llama3.2", Times(0, 0))

    def stream() -> object:
        tap = door(streamed).plan(kind).stream("llama3.2", Times(0, 0))  # type: ignore[misc]
        return [tap.feed(c) for c in chunks], tap.finish()

    print(f"  {label:<18} request {_per_call_us(request, rounds):6.1f}   answer {_per_call_us(whole, rounds):6.1f}"
          f"   16-token stream {_per_call_us(stream, rounds // 4):6.1f}")


async def _alternate(pairs: list[tuple[Target, Shape]], calls: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {target.name: [] for target, _ in pairs}
    sessions = {target.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                                   timeout=aiohttp.ClientTimeout(total=30)) for target, _ in pairs}
    try:
        for i in range(warmup + calls):
            for target, shape in pairs if i % 2 == 0 else pairs[::-1]:
                status, first, total = await timed_call(sessions[target.name], target.url(shape), shape, target.headers)
                if status != 200:
                    raise RuntimeError(f"{target.name}: {status}")
                if i >= warmup:
                    samples[target.name].append(first if shape.stream else total)
    finally:
        for session in sessions.values():
            await session.close()
    return samples


def through_gateway(calls: int, warmup: int) -> None:
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": PROMPT}]}
    message = {**chat, "max_tokens": 64}
    shapes = {
        "chat": Shape("/v1/chat/completions", json.dumps(chat).encode(), False),
        "native": Shape("/api/chat", json.dumps({**chat, "stream": False}).encode(), False),
        "messages": Shape("/v1/messages", json.dumps(message).encode(), False),
        "chat-stream": Shape("/v1/chat/completions", json.dumps({**chat, "stream": True}).encode(), True),
        "messages-stream": Shape("/v1/messages", json.dumps({**message, "stream": True}).encode(), True),
    }
    with Stack() as stack:
        sim = stack.endpoints["ollama-1"].url.rstrip("/")
        key = {"Authorization": f"Bearer {stack.demo_key}", "Content-Type": "application/json"}
        direct, gateway = Target("direct", sim, {"Content-Type": "application/json"}), \
            Target("gateway", stack.gateway_url, key)
        whole = uvloop.run(_alternate([
            (Target("chat direct", direct.base_url, direct.headers), shapes["chat"]),
            (Target("chat via gateway", gateway.base_url, gateway.headers), shapes["chat"]),
            (Target("/api/chat direct", direct.base_url, direct.headers), shapes["native"]),
            (Target("messages via gateway", gateway.base_url, gateway.headers), shapes["messages"]),
        ], calls, warmup))
        streamed = uvloop.run(_alternate([
            (Target("chat stream, first event", gateway.base_url, gateway.headers), shapes["chat-stream"]),
            (Target("messages stream, first event", gateway.base_url, gateway.headers), shapes["messages-stream"]),
        ], calls, warmup))
    print(f"Sequential calls, {calls} each after {warmup} untimed, one keep-alive connection each (microseconds)")
    for name, samples in {**whole, **streamed}.items():
        print(f"  {name:<30} {percentiles(samples)}")
    median = {name: sorted(s)[len(s) // 2] * 1e6 for name, s in whole.items()}
    print(f"  added p50: OpenAI chat {median['chat via gateway'] - median['chat direct']:.0f} us, "
          f"Anthropic message {median['messages via gateway'] - median['/api/chat direct']:.0f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anthropic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="in-process calls per measure (default: 2000)")
    parser.add_argument("--through-gateway", action="store_true", help="also time calls through `up --demo`")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per target (default: 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls per target first (default: 200)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the machine to be idle (other processes)")
    args = parser.parse_args(argv)
    if args.wait_quiet:
        from benchmarks.cpu import wait_until_quiet
        print(f"cores busy before the run: {wait_until_quiet(0.3, args.wait_quiet)}")
    translations(args.rounds)
    if args.through_gateway:
        through_gateway(args.calls, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
