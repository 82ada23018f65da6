"""Run each service as its own process, restart one that crashes, stop them all in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from switchyard_gateway.kit.stack_proc import _die_with_parent

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTHY_AFTER_S = 30.0      # a process that lived this long starts its backoff afresh


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    restart_at: float | None = None
    history: list[int] = field(default_factory=list)


class Supervisor:
    def __init__(self, log_dir: Path, echo: bool = True) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}
        self.echo = echo
        self.stopping = False

    def add(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, {**os.environ, **env}, self.log_dir / f"{name}.log")
        self.children[name] = child
        self._launch(child)
        return child

    def _launch(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as log:
            child.proc = subprocess.Popen(
                child.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child.env,
                start_new_session=True, preexec_fn=_die_with_parent(signal.SIGTERM),
            )
        child.started_at = time.monotonic()
        child.restart_at = None

    def poll(self) -> None:
        """Restart children that exited, with backoff; call this periodically."""
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping or child.proc is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self._say(f"restarting {child.name} (restart #{child.restarts})")
                    self._launch(child)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            lived = now - child.started_at
            child.failures_in_row = 0 if lived > HEALTHY_AFTER_S else child.failures_in_row + 1
            delay = RESTART_BACKOFF_S[min(child.failures_in_row, len(RESTART_BACKOFF_S) - 1)]
            child.history.append(code)
            self._say(f"{child.name} exited with code {code} after {lived:.1f} s; restarting in {delay:.1f} s "
                      f"(log: {child.log_path})")
            child.restart_at = now + delay

    def run_forever(self, interval_s: float = 0.25) -> None:
        """Supervise until the caller's signal handler raises."""
        while True:
            self.poll()
            time.sleep(interval_s)

    def stop(self, order: list[str] | None = None, timeout_s: float = 15.0) -> None:
        """SIGTERM each child (in `order`, then the rest), wait, SIGKILL what is left."""
        self.stopping = True
        names = (order or []) + [n for n in self.children if n not in (order or [])]
        for name in names:
            child = self.children[name]
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self._say(f"{name} did not stop in {timeout_s:.0f} s; killing it")
                    os.killpg(child.proc.pid, signal.SIGKILL)
                    child.proc.wait()

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"switchyard: {text}", file=sys.stderr, flush=True)
