"""The embedded launcher: NATS (JetStream), PostgreSQL and Valkey from pip-installed binaries, no Docker."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import msgspec
import structlog

from switchyard_gateway.kit import nats_auth
from switchyard_gateway.kit.nats_auth import SubscriberUser
from switchyard_gateway.kit.settings import mask_password
from switchyard_gateway.kit.stack_nats import NatsServer, cluster, nats_problem
from switchyard_gateway.kit.stack_postgres import PostgresServer, postgres_problem
from switchyard_gateway.kit.stack_proc import (
    Spawner, StackError, kept_secret, pick_free_port, port_is_free, wait_until, write_private,
)
from switchyard_gateway.kit.stack_server import ManagedServer
from switchyard_gateway.kit.stack_valkey import ValkeyServer, valkey_problem
from switchyard_gateway.kit.supervisor import INFRASTRUCTURE, Unit

__all__ = ["COMPONENTS", "Component", "EmbeddedStack", "StackError", "StackUrls"]

log = structlog.get_logger(__name__)

Component = Literal["nats", "postgres", "valkey"]
COMPONENTS: tuple[Component, ...] = ("nats", "postgres", "valkey")  # start order; stop runs reversed
_SERVERS: dict[str, type[ManagedServer]] = {
    "nats": NatsServer,
    "postgres": PostgresServer,
    "valkey": ValkeyServer,
}
_PROBLEMS = {"nats": nats_problem, "postgres": postgres_problem, "valkey": valkey_problem}
PRIVATE_URLS = "urls.private.json"      # in the data dir, its owner's alone: the URLs the services are given, whole
MAX_NATS_NODES = 9                      # a loopback cluster, for trying failover here: 3 or 5 in practice


def running_url(data_dir: Path, name: str) -> str:
    """SWITCHYARD_<NAME> from the environment, else that URL of the stack `switchyard up --data-dir D` runs
    (`name`: database_url, redis_url or nats_url), for tools that work on a running system."""
    url = os.environ.get(f"SWITCHYARD_{name.upper()}")
    if url:
        return url
    private, state = data_dir / PRIVATE_URLS, data_dir / "stack.json"
    if private.exists():                            # the URLs whole, passwords and all, for the data dir's owner
        return json.loads(private.read_text())[name]
    if not state.exists():
        raise SystemExit(f"switchyard: no SWITCHYARD_{name.upper()} and no stack at {data_dir} "
                         "(run `switchyard up --data-dir D` first, or pass the same --data-dir)")
    url = json.loads(state.read_text())["urls"][name]
    keys = data_dir / "keys.env"
    if name == "nats_url" and keys.exists():        # a stack run before the URLs were kept whole: NATS with users
        found = dict(line.partition("=")[::2] for line in keys.read_text().splitlines() if "=" in line)
        if found.get(nats_auth.PASSWORD_KEY):
            url = nats_auth.with_user(url, nats_auth.SERVICES_USER, found[nats_auth.PASSWORD_KEY])
    return url


class StackUrls(msgspec.Struct, frozen=True):
    """Where the services find NATS, PostgreSQL and Redis/Valkey."""

    nats_url: str
    database_url: str
    redis_url: str


class EmbeddedStack:
    """Runs the servers the system needs under one data directory, with no Docker and no system services.

    Layout of data_dir: ``stack.json`` (ports, reused on the next start so URLs and data stay put;
    pids), ``stack.lock``, ``logs/{nats,postgres,valkey}.log``, ``nats/`` (JetStream store),
    ``pg/data`` and ``pg/run`` (cluster, unix socket), ``valkey/`` (append-only file). With
    `nats_nodes` > 1, NATS is a cluster of that many nodes on loopback (``nats-<n>/``,
    ``logs/nats-<n>.log``, ports ``nats-<n>``, ``nats-<n>_monitor``, ``nats-<n>_cluster``) and
    its URL lists every node.

    A component given an external URL is not started; its URL is passed through once it answers.
    One launcher owns a data dir (an flock on stack.lock, released by the kernel when we die). A
    server still running from a launcher that died (its pid in stack.json, or postmaster.pid, is
    alive and runs our binary on our data) is stopped before a fresh one starts. Children get a
    signal when the launcher dies, even by SIGKILL (PR_SET_PDEATHSIG), and run in their own session
    so Ctrl-C reaches only the launcher, which then stops them in reverse order.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        nats_url: str | None = None,
        database_url: str | None = None,
        redis_url: str | None = None,
        durable: bool = True,
        nats_nodes: int = 1,
        log_dir: Path | None = None,
        ports: dict[str, int] | None = None,
        ready_timeout_s: float = 30.0,
        stop_timeout_s: float = 15.0,
        nats_config: Path | None = None,
        nats_password: str | None = None,
        nats_users: list[SubscriberUser] | None = None,
        locked: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.nats_config = nats_config  # read by nats-server before its flags: users and permissions, as given
        # else NATS asks every client for a user: the services' (this password, else one kept in nats/password) and
        # each of `nats_users`, the subscribers
        self.nats_users = (nats_password or (kept_secret(self.data_dir / "nats" / "password") if nats_url is None
                                             else ""), list(nats_users or []))
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else self.data_dir / "logs"
        self.durable = durable  # False: fsync off in postgres and valkey (tests, benchmarks)
        if nats_nodes < 1 or nats_nodes == 2:
            raise StackError(f"a NATS cluster needs 3 nodes or more for its JetStream quorum, not {nats_nodes}")
        if nats_nodes > MAX_NATS_NODES:     # each a server on this machine: 99 were being started, one by one
            raise StackError(f"a NATS cluster here has at most {MAX_NATS_NODES} nodes (every stream is kept on 3 of "
                             f"them), not {nats_nodes}")
        self.nats_nodes = nats_nodes
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._external: dict[str, str | None] = {
            "nats": nats_url,
            "postgres": database_url,
            "valkey": redis_url,
        }
        self._fixed_ports = dict(ports or {})  # e.g. {"nats": 4222, "nats_monitor": 8222, "postgres": 5432}
        self._servers: dict[str, ManagedServer] = {}
        self._spawner: Spawner | None = None
        self._lock_fd = locked      # the flock on stack.lock, when the caller took it first (`lock_data_dir`)
        self._urls: StackUrls | None = None
        self._also_ports: dict[str, int] = {}

    # -- the whole stack --------------------------------------------------------------------------

    def plan(self, also: tuple[str, ...] = ()) -> dict[str, int]:
        """Lock the data dir, stop what a dead launcher left on it, choose every port; start nothing.

        `also` names ports the caller needs besides the servers' (its services'): they are chosen
        the same way (fixed, else last time's when free, else new) and kept in stack.json. Returns
        every port by name ({"nats": 4222, "nats_monitor": 8222, "gateway": 8080, ...}), so that
        the caller can check them all before anything starts.
        """
        if self._spawner is not None:
            return self.ports
        self.lock()
        self._spawner = Spawner()
        try:
            state = self._read_state()
            self._servers = {server.name: server for name in COMPONENTS if self._external[name] is None
                             for server in self._build(name)}
            for name, server in self._servers.items():
                server.reclaim(state.get("pids", {}).get(name), timeout_s=self.stop_timeout_s)
            names = [name for server in self._servers.values() for name in server.port_names] + list(also)
            ports = self._choose_ports(names, state.get("ports", {}))
            for server in self._servers.values():
                server.ports = {port_name: ports[port_name] for port_name in server.port_names}
            self._also_ports = {name: ports[name] for name in also}
        except BaseException:
            self.stop()
            raise
        return self.ports

    def lock(self) -> None:
        """Own the data dir, unless the caller gave the lock it took (`locked`)."""
        if self._lock_fd is None:
            self._lock_fd = lock_data_dir(self.data_dir)

    @property
    def ports(self) -> dict[str, int]:
        """Every port of the plan by name: the servers' and those asked for with `also`."""
        servers = {name: port for server in self._servers.values() for name, port in server.ports.items()}
        return {**servers, **self._also_ports}

    def start(self) -> StackUrls:
        """Start every component without an external URL, wait until all answer, return the URLs."""
        if self._urls is not None:
            return self._urls
        started = time.monotonic()
        self.plan()
        assert self._spawner is not None
        try:
            for server in self._servers.values():
                server.spawn(self._spawner)
                self._write_state()
            for server in self._servers.values():
                server.wait_ready(timeout_s=self.ready_timeout_s)
            for name, url in self._external.items():
                if url is not None:
                    self._wait_external(name, url)
            self._urls = StackUrls(
                nats_url=self._url("nats"),
                database_url=self._url("postgres"),
                redis_url=self._url("valkey"),
            )
        except BaseException:
            self.stop()
            raise
        self._write_state()
        log.info("stack.started", data_dir=str(self.data_dir), start_s=round(time.monotonic() - started, 3))
        return self._urls

    def units(self) -> list[Unit]:
        """The running servers as supervisor units: restarted on the same ports and data when they die."""
        return [ServerUnit(self, server) for server in self._servers.values()]

    def stop(self) -> None:
        """Stop every server we started, all at once; safe to call twice or after a failed start."""
        running = [server for name in reversed(COMPONENTS) for server in self._of(name)]
        for server in running:
            server.ask_to_stop()
        for server in running:
            server.stop(timeout_s=self.stop_timeout_s)
        if self._servers:
            self._write_state()
        self._servers, self._also_ports = {}, {}
        self._urls = None
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def urls(self) -> StackUrls:
        if self._urls is None:
            raise StackError("the stack is not started")
        return self._urls

    # -- one component (fault tests) --------------------------------------------------------------

    def stop_component(self, name: str, *, graceful: bool = True) -> None:
        """Stop one server we started (a component, or one node of the NATS cluster: `nats-2`); graceful=False
        SIGKILLs it (and its workers) like a crash."""
        self._managed(name).stop(graceful=graceful, timeout_s=self.stop_timeout_s)
        self._write_state()

    def start_component(self, name: str) -> None:
        """Start one stopped server again on the same port and data, and wait until it answers."""
        server = self._managed(name)
        if server.running:
            return
        assert self._spawner is not None
        try:
            server.spawn(self._spawner)
            self._write_state()
            server.wait_ready(timeout_s=self.ready_timeout_s)
        except BaseException:
            server.stop(timeout_s=self.stop_timeout_s)
            raise

    def reload_nats_users(self, subscribers: list[SubscriberUser]) -> list[str]:
        """Give the NATS we run these subscribers, the services' user unchanged: every node's configuration written
        again and read by the node at once (a node down reads it when it starts again). Returns the nodes that did
        not take it, each with why (nats-server's own line)."""
        servers = [server for server in self._of("nats") if isinstance(server, NatsServer)]
        if not servers or any(server.users is None for server in servers):
            raise StackError("the stack runs no NATS with users of its own to reload")
        self.nats_users = (self.nats_users[0], list(subscribers))
        asked = []
        for server in servers:                      # every node asked first, then each waited for
            server.users = self.nats_users
            asked.append((server, server.ask_to_reload()))
        return [f"{server.name}: {why}" for server, reload in asked
                if reload is not None and (why := server.reloaded(reload)) is not None]

    def is_running(self, name: str) -> bool:
        server = self._servers.get(name)
        return server is not None and server.running

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    # -- internals --------------------------------------------------------------------------------

    def _build(self, component: str) -> list[ManagedServer]:
        if component == "nats" and self.nats_nodes > 1:
            servers: list[ManagedServer] = list(cluster(self.nats_nodes, self.data_dir, self.log_dir,
                                                        durable=self.durable))
        else:
            servers = [_SERVERS[component](self.data_dir, self.log_dir, _no_ports(component), durable=self.durable)]
        for server in servers:
            if isinstance(server, NatsServer):
                server.config = self.nats_config
                server.users = self.nats_users if self.nats_config is None else None
        return servers

    def _of(self, component: str) -> list[ManagedServer]:
        """The servers that make up one component (the nodes of a NATS cluster; else one server)."""
        return [server for server in self._servers.values() if server.component == component]

    def _managed(self, name: str) -> ManagedServer:
        if name in self._servers:
            return self._servers[name]
        if name not in COMPONENTS:
            raise StackError(f"unknown component {name!r}; expected one of {COMPONENTS} or {sorted(self._servers)}")
        if self._external[name] is not None:
            url = mask_password(self._external[name] or "")
            raise StackError(f"{name} is external ({url}); the stack does not run it")
        if self._of(name):
            raise StackError(f"{name} is a cluster: name one of its nodes, {[s.name for s in self._of(name)]}")
        raise StackError("the stack is not started")

    def _url(self, name: str) -> str:
        return self._external[name] or ",".join(server.url for server in self._of(name))

    def _choose_ports(self, names: list[str], recorded: dict[str, int]) -> dict[str, int]:
        """Fixed ports as given; else the ports this data dir used last time when free; else new ones."""
        chosen: dict[str, int] = {}
        fixed = set(self._fixed_ports.values())
        for port_name in names:
            taken = set(chosen.values()) | fixed
            previous = recorded.get(port_name)
            if port_name in self._fixed_ports:
                chosen[port_name] = self._fixed_ports[port_name]
            elif previous and previous not in taken and port_is_free(previous):
                chosen[port_name] = previous
            else:
                chosen[port_name] = pick_free_port(taken)
                if previous:
                    log.warning("stack.port_moved", port=port_name, was=previous, now=chosen[port_name])
        return chosen

    def _wait_external(self, name: str, url: str) -> None:
        problems: list[str | None] = [None]

        def answers() -> bool:
            problems[0] = _PROBLEMS[name](url)
            return problems[0] is None

        if not wait_until(answers, timeout_s=self.ready_timeout_s, interval_s=0.25):
            within = f"within {self.ready_timeout_s:.0f} s"
            raise StackError(f"{name}: external {mask_password(url)} did not answer {within}: {problems[0]}")

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "stack.json"

    def _read_state(self) -> dict:
        try:
            state = json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("stack.state_unreadable", path=str(self._state_path), error=str(exc))
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        """Record ports (kept for components now external, for next time) and live pids, atomically."""
        state = self._read_state()
        ports = dict(state.get("ports", {}))
        pids = dict(state.get("pids", {}))
        ports.update(self._also_ports)
        for name, server in self._servers.items():
            ports.update(server.ports)
            pids[name] = server.pid
        state.update(ports=ports, pids=pids, launcher_pid=os.getpid())
        if self._urls is not None:
            whole = msgspec.structs.asdict(self._urls)
            state["urls"] = {key: mask_password(value) for key, value in whole.items()}
            write_private(self.data_dir / PRIVATE_URLS, json.dumps(whole, indent=2) + "\n")
        scratch = self._state_path.with_suffix(".json.tmp")
        scratch.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        scratch.replace(self._state_path)


class ServerUnit(Unit):
    """One embedded server under the supervisor: a restart spawns it again on its ports and data."""

    tier = INFRASTRUCTURE

    def __init__(self, stack: EmbeddedStack, server: ManagedServer) -> None:
        self.stack, self.server = stack, server
        self.name, self.log_path, self.stop_signal = server.name, server.log_path, server.stop_signal

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.server.process

    def launch(self) -> subprocess.Popen[bytes]:
        assert self.stack._spawner is not None, "the stack is stopped"  # noqa: SLF001 — the stack's own unit
        self.server.process = None                     # the dead one, already reaped by the supervisor
        self.server.spawn(self.stack._spawner)          # noqa: SLF001
        self.stack._write_state()                       # noqa: SLF001 — pids in stack.json stay true
        assert self.server.process is not None
        return self.server.process


def _no_ports(name: str) -> dict[str, int]:
    """Port 0 for each port of a component, until the real ones are chosen."""
    return {port_name: 0 for port_name in _SERVERS[name].port_names}


def lock_data_dir(data_dir: Path) -> int:
    """Own a data dir: an exclusive flock on its stack.lock (with our pid inside), released by the kernel when we die,
    or StackError naming the launcher that holds it. Take it before changing anything there: a second launcher
    refused must have touched nothing of the running stack's."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "stack.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StackError(f"{path.parent} is in use by another launcher (pid {owner})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
