"""The life cycle every embedded server shares: prepare, spawn on fixed ports, wait until it answers, stop."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

import structlog

from switchyard_gateway.kit.ports import check_free
from switchyard_gateway.kit.stack_proc import (
    LOOPBACK,
    Spawner,
    StackError,
    log_tail,
    pid_alive,
    pid_cmdline,
    pid_path,
    spawn,
    stop_pid,
    stop_process,
    wait_until,
)

log = structlog.get_logger(__name__)


class ManagedServer:
    """One server binary run as our child, always on the same ports and data directory.

    Subclasses name their ports, build the command line and say when the server answers.
    """

    name: ClassVar[str]
    port_names: ClassVar[tuple[str, ...]]
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(self, data_dir: Path, log_dir: Path, ports: dict[str, int], *, durable: bool) -> None:
        self.data_dir = data_dir
        self.log_path = log_dir / f"{self.name}.log"
        self.ports = {name: ports[name] for name in self.port_names}
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._asked = False          # the stop signal was sent by ask_to_stop

    # -- what subclasses provide ----------------------------------------------------------------

    @property
    def component(self) -> str:
        """What the stack runs this server as (`nats`, `postgres`, `valkey`); a cluster's nodes share one."""
        return self.name

    @property
    def port(self) -> int:
        return self.ports[self.port_names[0]]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def binary(self) -> Path:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self, spawner: Spawner) -> None:
        """Create directories and anything needed before the first spawn (runs on every start)."""

    def spawn_options(self) -> dict[str, Any]:
        return {}

    def answers(self) -> bool:
        raise NotImplementedError

    def on_ready(self) -> None:
        """Runs once the server answers (e.g. create the application database)."""

    @property
    def home(self) -> Path:
        """The directory this server keeps its data in; it shows in its argv or as its cwd."""
        raise NotImplementedError

    def owns(self, pid: int) -> bool:
        """True when pid runs our binary on our data (a leftover of a dead launcher, ours to stop).

        Servers may rewrite their argv (valkey does), so the data dir may show as the cwd instead.
        """
        exe = pid_path(pid, "exe")
        if exe is None or exe.resolve() != self.binary().resolve():
            return False
        return str(self.home) in pid_cmdline(pid)[1:] or pid_path(pid, "cwd") == self.home

    # -- life cycle -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reclaim(self, pid: int | None, *, timeout_s: float) -> None:
        """Stop a server a dead launcher left running on our data, so we can own a fresh one."""
        if pid is None or not pid_alive(pid) or not self.owns(pid):
            return
        log.warning("stack.reclaim_leftover", component=self.name, pid=pid)
        stop_pid(pid, stop_signal=self.stop_signal, timeout_s=timeout_s)

    def spawn(self, spawner: Spawner) -> None:
        """Start the process (returns at once; see wait_ready)."""
        if self.running:
            return
        self.prepare(spawner)
        check_free({name: (LOOPBACK, port) for name, port in self.ports.items()})
        args, options = self.command(), self.spawn_options()
        self.process = spawner.call(
            lambda: spawn(args, self.log_path, death_signal=self.stop_signal, **options)
        )

    def wait_ready(self, *, timeout_s: float) -> None:
        """Poll until the server answers; raise StackError with the log tail if it exits or times out."""
        started = time.monotonic()
        if not wait_until(self.answers, timeout_s=timeout_s, on_poll=self._raise_if_exited):
            raise self.error(f"did not answer on port {self.port} within {timeout_s:.0f} s")
        self.on_ready()
        ready_s = round(time.monotonic() - started, 3)
        log.info("stack.ready", component=self.name, port=self.port, ready_s=ready_s)

    def ask_to_stop(self) -> None:
        """Send the graceful stop signal and return at once (stop() then waits without sending it again)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(self.stop_signal)
            self._asked = True

    def stop(self, *, graceful: bool = True, timeout_s: float = 15.0) -> None:
        """Stop the server (graceful signal, SIGKILL after timeout_s); a no-op when it is not running."""
        if self.process is None:
            return
        stop_signal = self.stop_signal if graceful else signal.SIGKILL
        stop_process(self.process, stop_signal=stop_signal, timeout_s=timeout_s, send=not (graceful and self._asked))
        self.process, self._asked = None, False

    def error(self, problem: str) -> StackError:
        tail = log_tail(self.log_path)
        return StackError(f"{self.name}: {problem}; last lines of {self.log_path}:\n{tail}")

    def _raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            code = self.process.returncode
            self.process = None
            raise self.error(f"exited during start-up with code {code}")
