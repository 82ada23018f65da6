"""Benchmark WebSocket embeddings against the same calls over HTTP, and check that each was metered once.

    python -m benchmarks.ws [--calls 4000] [--concurrency 16] [--wait-quiet 60]
    python -m benchmarks.ws --unread [--hold 12]

Runs `switchyard up --demo --no-fsync` and sends the same embedding request `--calls` times three ways,
`--concurrency` at a time: over HTTP on that many keep-alive connections, over one WebSocket with that
many requests in flight (JSON answers), and the same with binary answers. Prints calls/s, the gateway's
CPU per call (every gateway process, psutil) and the latency percentiles of each, then waits until the
usage log holds one event per call made.

`--unread`: instead, two sockets each send 16 requests of 200 inputs (3.2 MB answers) and read nothing for
`--hold` seconds; prints the gateway's memory (RSS of its processes) before and at its peak meanwhile, then reads
every answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import time

import aiohttp
import psutil
import uvloop
from websockets.asyncio.client import connect

from benchmarks.accounting import UsageLog
from benchmarks.load import SHAPES
from benchmarks.quota import percentiles
from benchmarks.stack import Stack

BODY = json.loads(SHAPES["embed"].body)


async def over_http(url: str, key: str, calls: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    left = iter(range(calls))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            for _ in left:
                started = time.perf_counter()
                async with session.post(f"{url}/v1/embeddings", data=SHAPES["embed"].body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started), latencies


async def over_ws(url: str, key: str, calls: int, concurrency: int, binary: bool) -> tuple[float, list[float]]:
    sent: dict[int, float] = {}
    latencies: list[float] = []
    async with connect(url.replace("http://", "ws://") + "/ws", additional_headers={"Authorization": f"Bearer {key}"},
                       max_size=2 ** 24) as ws:
        started = time.perf_counter()
        next_id = 0
        while next_id < min(concurrency, calls):
            sent[next_id] = time.perf_counter()
            await ws.send(json.dumps({**BODY, "id": next_id, "binary": binary}))
            next_id += 1
        while len(latencies) < calls:
            answer = await ws.recv()
            if isinstance(answer, bytes):          # the id follows the 20-byte header (edge/ws_frames.py)
                ident = int(answer[20:20 + int.from_bytes(answer[6:8], "little")])
            else:                                   # the id comes first: read it without decoding the vectors
                ident = int(answer[6:answer.index(",")])
            latencies.append(time.perf_counter() - sent.pop(ident))
            if next_id < calls:
                sent[next_id] = time.perf_counter()
                await ws.send(json.dumps({**BODY, "id": next_id, "binary": binary}))
                next_id += 1
        elapsed = time.perf_counter() - started
    return calls / elapsed, latencies


async def run(stack: Stack, calls: int, concurrency: int) -> None:
    log = await UsageLog.connect(stack.database_url)
    before = await log.count()
    for name, measure in (("HTTP /v1/embeddings", over_http(stack.gateway_url, stack.demo_key, calls, concurrency)),
                          ("WebSocket /ws, JSON", over_ws(stack.gateway_url, stack.demo_key, calls, concurrency,
                                                          False)),
                          ("WebSocket /ws, binary", over_ws(stack.gateway_url, stack.demo_key, calls, concurrency,
                                                            True))):
        cpu = _gateway_cpu_s()
        rate, latencies = await measure
        per_call = (_gateway_cpu_s() - cpu) / calls * 1e6
        print(f"  {name:<24} {rate:8.0f} calls/s   gateway CPU {per_call:5.0f} us/call   latency "
              f"{percentiles(latencies)}")
    recorded, _ = await log.wait_for(before + 3 * calls)
    print(f"  usage events recorded: {recorded - before} for {3 * calls} calls")
    await log.close()


def unread(stack: Stack, hold_s: float, sockets: int = 2, requests: int = 16, inputs: int = 200) -> None:
    """Clients that send requests with large answers and stop reading: what the gateway holds for them."""
    before = _gateway_rss_mib(stack)
    opened = []
    for number in range(sockets):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)      # a small window: a client that reads little
        sock.connect(("127.0.0.1", stack.port))
        sock.sendall(f"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     f"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                     f"authorization: Bearer {stack.demo_key}\r\n\r\n".encode())
        for ident in range(requests):
            body = json.dumps({"id": ident, "model": BODY["model"],
                               "input": [f"text {j} {ident} {number}" for j in range(inputs)]}).encode()
            sock.sendall(b"\x81\xfe" + struct.pack("!H", len(body)) + b"\0\0\0\0" + body)   # masked with zeros
        opened.append(sock)
    peak, deadline = before, time.monotonic() + hold_s
    while time.monotonic() < deadline:
        time.sleep(0.5)                     # sampling memory while the clients hold
        peak = max(peak, _gateway_rss_mib(stack))
    print(f"  gateway RSS {before:.0f} MiB before; {sockets} sockets with {requests} requests of {inputs} inputs "
          f"each, reading nothing for {hold_s:g} s: peak {peak:.0f} MiB (+{peak - before:.0f})")
    for sock in opened:
        sock.settimeout(30)
        answers = _count_messages(sock, requests)
        sock.close()
    print(f"  then read: {answers} answers on each socket")


def _count_messages(sock: socket.socket, wanted: int) -> int:
    """Read (after the handshake's answer) until `wanted` messages have come; how many did."""
    data = sock.recv(1 << 16).split(b"\r\n\r\n", 1)[1]
    count = 0
    while count < wanted:
        size, at = (data[1] & 0x7F, 2) if len(data) >= 2 else (-1, 0)
        if size == 126 and len(data) >= 4:
            size, at = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127 and len(data) >= 10:
            size, at = struct.unpack("!Q", data[2:10])[0], 10
        if 0 <= size < 126 or at > 2:
            if len(data) >= at + size:
                data, count = data[at + size:], count + 1
                continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return count


def _gateway_rss_mib(stack: Stack) -> float:
    """The RSS of this stack's gateway processes (not another's on the same machine)."""
    assert stack.process is not None
    total = 0
    for proc in psutil.Process(stack.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "switchyard_gateway.services.gateway" in " ".join(proc.cmdline()):
                total += proc.memory_info().rss
    return total / 2 ** 20


def _gateway_cpu_s() -> float:
    """User and system CPU seconds of the gateway's processes (granian's main and its worker)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        if "switchyard_gateway.services.gateway" in " ".join(proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ws", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per way (default: 4000)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight (default: 16, the WS bound)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for the machine to be idle (other processes)")
    parser.add_argument("--unread", action="store_true", help="measure the memory clients that stop reading hold")
    parser.add_argument("--hold", type=float, default=12.0, metavar="S", help="--unread: how long they hold (12)")
    args = parser.parse_args(argv)
    if args.wait_quiet:
        from benchmarks.cpu import wait_until_quiet
        print(f"cores busy before the run: {wait_until_quiet(0.3, args.wait_quiet)}")
    if args.unread:
        with Stack() as stack:
            unread(stack, args.hold)
        return 0
    with Stack() as stack:
        print(f"Embedding calls through the gateway, {args.calls} per way, {args.concurrency} in flight "
              "(latency in microseconds)")
        uvloop.run(run(stack, args.calls, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
