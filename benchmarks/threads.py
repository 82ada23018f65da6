"""Benchmark sequential calls thread by thread: what one call at a time costs each thread of the gateway.

    python -m benchmarks.threads [--variant policy|light|no-fsync|no-limits] [--calls 5000] [--warmup 300]

Starts `switchyard up --demo` with one gateway worker (the variant's limits and fsync, as `benchmarks.run`
sets them), makes `--warmup` chat calls and then `--calls` more, one at a time on one keep-alive connection
from a plain blocking socket (so the client costs next to nothing), and prints the round trip's p50 and p99
and the CPU per call of every thread of the gateway's processes and of every other
process of the stack. Sequential calls pay alone for the wake-ups that load shares, so this is where a
hand-off between threads, or a system call per call, shows.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Callable

import psutil

from benchmarks.run import POLICY_LIMITS, VARIANTS
from benchmarks.stack import Stack

BODY = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16}


def caller(url: str, key: str) -> Callable[[], None]:
    """One chat call at a time over one keep-alive connection; raises unless each answers 200."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = json.dumps(BODY).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    def call() -> None:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            data += chunk
            head, found, rest = data.partition(b"\r\n\r\n")
            if not found:
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(rest) < length:
                rest += sock.recv(65536)
            return

    return call


def thread_cpu(process: psutil.Process) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `process`, by `thread <id>`."""
    return {f"thread {t.id}": t.user_time + t.system_time for t in process.threads()}


def _label(process: psutil.Process) -> str:
    """A process as the table names it: a service or simulator by its module, a server by its name."""
    command = " ".join(process.cmdline())
    if "switchyard_gateway." in command:
        return command.split("-m ", 1)[-1].split()[0].removeprefix("switchyard_gateway.")
    return f"{process.name()} {command.removeprefix(process.name())}"[:60]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="policy",
                        help="as benchmarks.run's: policy (default) has limits and fsync, light neither")
    parser.add_argument("--calls", type=int, default=5000, help="measured calls (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=300, help="calls before measuring (default: %(default)s)")
    args = parser.parse_args()
    limits, fsync = VARIANTS[args.variant]
    with Stack(fsync=fsync, journal_fsync=fsync, up_args=["--gateway-workers", "1"]) as stack:
        if limits:
            stack.admin("PUT", "/api/admin/tenants/demo/limits", POLICY_LIMITS)
        call = caller(stack.gateway_url, stack.demo_key)
        for _ in range(args.warmup):
            call()
        assert stack.process is not None
        tree = psutil.Process(stack.process.pid).children(recursive=True)
        gateway = [p for p in tree if "services.gateway" in " ".join(p.cmdline())]
        names = {p.pid: _label(p) for p in tree}
        threads_before = {p.pid: thread_cpu(p) for p in gateway}
        procs_before = {p.pid: sum(p.cpu_times()[:2]) for p in tree}
        took = []
        for _ in range(args.calls):
            started = time.perf_counter()
            call()
            took.append(time.perf_counter() - started)
        threads_after = {p.pid: thread_cpu(p) for p in gateway}
        procs_after = {p.pid: sum(p.cpu_times()[:2]) for p in tree}
    took.sort()
    n = len(took)
    print(f"variant {args.variant}: {n} sequential chat calls, round trip p50 {took[n // 2] * 1000:.3f} ms, "
          f"p99 {took[int(n * 0.99)] * 1000:.3f} ms")
    print("gateway threads, CPU ms per call:")
    for pid, after in threads_after.items():
        for thread, seconds in after.items():
            used = seconds - threads_before[pid].get(thread, 0.0)
            if used > 0:
                print(f"  {pid} {thread:28} {used / n * 1000:.3f}")
    print("every process of the stack, CPU ms per call:")
    for pid, seconds in procs_after.items():
        used = seconds - procs_before[pid]
        if used > 0:
            print(f"  {pid} {names[pid]:60} {used / n * 1000:.3f}")


if __name__ == "__main__":
    main()
