"""Run `switchyard up --demo` as a subprocess for a benchmark: start, find keys and simulators, stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

READY_LINE = "Switchyard is up."


class StackFailed(RuntimeError):
    """`switchyard up` exited or did not become ready; the tail of its output says why."""


@dataclass
class Endpoint:
    """One upstream the gateway knows, as /api/config lists it."""

    id: str
    url: str
    priority: int


@dataclass
class Stack:
    """A running `switchyard up --demo` with a fresh data dir; use as a context manager."""

    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 60.0
    keep_data: bool = False
    fsync: bool = False                                   # PostgreSQL and Valkey flush their writes (no --no-fsync)
    journal_fsync: bool = False                           # the gateway's journal fdatasyncs each batch
    venv: Path | None = None                              # run `switchyard` from this virtualenv (default: ours)
    env: dict[str, str] = field(default_factory=dict)     # SWITCHYARD_* settings for every service
    up_args: list[str] = field(default_factory=list)      # more `switchyard up` options (--replicas, --nats-cluster)
    data_dir: Path = field(init=False)
    port: int = field(init=False)
    command: list[str] = field(init=False)
    process: subprocess.Popen[bytes] | None = field(init=False, default=None)
    admin_key: str = field(init=False, default="")
    demo_key: str = field(init=False, default="")
    database_url: str = field(init=False, default="")
    endpoints: dict[str, Endpoint] = field(init=False, default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "up.log"

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the stack, wait for its ready line, then read keys, database URL and endpoints."""
        self.data_dir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
        self.data_dir.chmod(0o755)  # the embedded PostgreSQL may run as another user
        self.port = free_port()
        bin_dir = self.venv / "bin" if self.venv is not None else Path(sys.executable).parent
        exe = shutil.which("switchyard", path=str(bin_dir)) or "switchyard"
        self.command = [exe, "up", "--demo", *([] if self.fsync else ["--no-fsync"]),
                        *(["--journal-fsync"] if self.journal_fsync else []),
                        "--data-dir", str(self.data_dir), "--port", str(self.port), *self.up_args]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}, **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the stack with SIGTERM
            )
        self._wait_ready()
        keys = _env_file(self.data_dir / "keys.env")
        self.admin_key, self.demo_key = keys["SWITCHYARD_ADMIN_KEY"], keys["SWITCHYARD_DEMO_KEY"]
        url = json.loads((self.data_dir / "stack.json").read_text())["urls"]["database_url"]
        if ":***@" in url:                          # the password is kept beside the cluster, masked in stack.json
            url = url.replace(":***@", f":{(self.data_dir / 'postgres.password').read_text().strip()}@")
        self.database_url = url
        config = self.get_json("/api/config", self.admin_key)
        self.endpoints = {e["id"]: Endpoint(e["id"], e["url"], e.get("priority", 0)) for e in config["endpoints"]}

    def stop(self) -> None:
        """SIGTERM the `up` process and wait for it; SIGKILL its session if it does not stop in time.

        A second Ctrl-C or SIGTERM while stopping is ignored, so it cannot leave the stack running.
        """
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if hasattr(self, "data_dir") and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def get_json(self, path: str, key: str | None = None, base: str | None = None) -> dict:
        """GET a JSON document from the gateway (or `base`), with `key` as the Bearer token."""
        request = urllib.request.Request((base or self.gateway_url) + path)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — loopback only
            return json.loads(response.read())

    def set_caps(self, cap: int) -> None:
        """Give every endpoint a per-model concurrency cap through the admin API."""
        for endpoint in self.get_json("/api/admin/endpoints", self.admin_key):
            body = {k: v for k, v in endpoint.items() if k != "updated_at"}
            body["max_concurrent"] = cap
            request = urllib.request.Request(f"{self.gateway_url}/api/admin/endpoints/{endpoint['endpoint_id']}",
                                             data=json.dumps(body).encode(), method="PUT",
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {self.admin_key}"})
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310 — loopback only
                pass

    def admin(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the gateway's admin API with the admin key; the JSON reply."""
        request = urllib.request.Request(self.gateway_url + path, data=json.dumps(body or {}).encode(), method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.admin_key}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — loopback only
            return json.loads(response.read() or b"{}")

    def post_json(self, url: str, body: dict) -> dict:
        """POST a JSON body to `url` (a simulator's control API) and return the JSON reply."""
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 — loopback only
            return json.loads(response.read())

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise StackFailed(f"switchyard up exited with {self.process.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise StackFailed(f"switchyard up not ready within {self.ready_timeout_s:.0f} s:\n{self._tail()}")
            time.sleep(0.1)  # polling a log file for the ready line, under a deadline

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}
