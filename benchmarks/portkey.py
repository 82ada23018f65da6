"""Portkey's open-source gateway (Node), installed from npm and started on a free port, to be measured beside ours.

`Portkey(upstream)` installs `@portkey-ai/gateway` once under `benchmarks/.portkey/` (npm), starts it
headless on loopback with NODE_ENV=production, and routes every call to `upstream` (an OpenAI-style
server: the same simulator the benchmark calls directly) through its `x-portkey-custom-host` header.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from benchmarks.load import Target
from benchmarks.stack import free_port

VERSION = "1.15.2"                       # the version the figures were measured with
HOME = Path(__file__).resolve().parent / ".portkey"
SERVER = HOME / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"


class PortkeyUnavailable(RuntimeError):
    """node or npm is missing, the install failed, or the server did not start; the message says which."""


class Portkey:
    """A running Portkey gateway in front of `upstream`; use as a context manager."""

    def __init__(self, upstream: str, ready_timeout_s: float = 60.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.ready_timeout_s = ready_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self) -> Target:
        """Calls through Portkey to the upstream, as its OpenAI provider with a custom host."""
        return Target("portkey", self.url, {
            "Content-Type": "application/json", "Authorization": "Bearer sk-bench",
            "x-portkey-provider": "openai", "x-portkey-custom-host": f"{self.upstream}/v1",
        })

    def pids(self) -> set[int]:
        """The node process and any children it started."""
        if self.process is None:
            return set()
        try:
            root = psutil.Process(self.process.pid)
            return {root.pid, *(p.pid for p in root.children(recursive=True))}
        except psutil.Error:
            return set()

    def cpu_s(self) -> float:
        """User + system CPU the server has used so far."""
        total = 0.0
        for pid in self.pids():
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total

    def __enter__(self) -> Portkey:
        install()
        node = shutil.which("node")
        if node is None:
            raise PortkeyUnavailable("node is not installed")
        self.port = free_port()
        env = {**os.environ, "NODE_ENV": "production"}
        self.process = subprocess.Popen([node, str(SERVER), f"--port={self.port}", "--headless"], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as reply:  # noqa: S310 — loopback only
                    if reply.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise PortkeyUnavailable(f"Portkey did not start on port {self.port}")
            time.sleep(0.2)  # polling a starting server under a deadline

    def __exit__(self, *exc: object) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def install() -> None:
    """npm install the pinned version under benchmarks/.portkey/ unless it is there already."""
    if SERVER.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PortkeyUnavailable("npm is not installed")
    HOME.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(HOME),
                           f"@portkey-ai/gateway@{VERSION}"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not SERVER.exists():
        raise PortkeyUnavailable(f"npm install @portkey-ai/gateway@{VERSION} failed: {done.stderr[-500:]}")
