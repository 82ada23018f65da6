"""Keep units running: restart one that dies once its whole process group is gone, stop them all by tiers.

A unit is one process leading its own process group (a service's granian main and its worker;
a postgres postmaster and its backends). When the leader exits, whatever is left of its group
(a worker still draining its queue) gets SIGTERM, then SIGKILL after GROUP_GRACE_S, and only
then does the replacement start, after a backoff: one copy of a unit at a time, never two on
one port. Units are named, so N copies of a service or three NATS nodes are N units.

Stopping goes tier by tier, highest first (services, then the infrastructure they need to
drain), and within a tier every unit at once.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from switchyard_gateway.kit.stack_proc import StackError, group_members, live_groups, signal_group, spawn

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
HEALTHY_AFTER_S = 30.0      # a process that lived this long starts its backoff afresh
GROUP_GRACE_S = 5.0         # what is left of a dead unit's group gets this long to finish before SIGKILL
STOP_TIMEOUT_S = 10.0       # a tier not stopped by then is killed
INFRASTRUCTURE, UPSTREAMS, SERVICES = 0, 1, 2   # stop order: services (they finish their calls), then the rest


class Unit:
    """One supervised process and its group: how to start it, how to ask it to stop."""

    name: str
    tier: int
    log_path: Path
    stop_signal: int = signal.SIGTERM

    def launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError


class Command(Unit):
    """A program run from an argv with extra environment (a service, the upstream simulator)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 tier: int = SERVICES) -> None:
        self.name, self.argv, self.env, self.log_path, self.tier = name, argv, env, log_path, tier

    def launch(self) -> subprocess.Popen[bytes]:
        return spawn(self.argv, self.log_path, death_signal=signal.SIGTERM, env=self.env)


class State(Enum):
    RUNNING = "running"
    REAPING = "reaping"       # the leader exited; the rest of its group is being ended
    WAITING = "waiting"       # backing off before the restart
    STOPPED = "stopped"


@dataclass
class Watch:
    """What the supervisor knows of one unit: its process, its state, its exits."""

    unit: Unit
    proc: subprocess.Popen[bytes] | None = None
    state: State = State.STOPPED
    started_at: float = 0.0
    exited_at: float = 0.0
    deadline: float = 0.0
    failures_in_row: int = 0
    restarts: int = 0
    history: list[int] = field(default_factory=list)    # exit codes, oldest first


class Supervisor:
    """Launches units, restarts them as they die (poll), stops them all (stop); single-threaded."""

    def __init__(self, echo: bool = True, group_grace_s: float = GROUP_GRACE_S) -> None:
        self.watches: dict[str, Watch] = {}
        self.echo, self.group_grace_s = echo, group_grace_s
        self.stopping = False
        self._pidfds: dict[int, int] = {}      # leader pid -> pidfd, readable once it exits

    def add(self, unit: Unit, running: subprocess.Popen[bytes] | None = None) -> Watch:
        """Supervise a unit: launch it now, or adopt the process it already runs as."""
        if unit.name in self.watches:
            raise StackError(f"a unit named {unit.name!r} is already supervised")
        watch = self.watches[unit.name] = Watch(unit)
        if running is not None:
            watch.proc, watch.state, watch.started_at = running, State.RUNNING, time.monotonic()
        else:
            self._launch(watch)
        return watch

    def _launch(self, watch: Watch) -> None:
        try:
            watch.proc = watch.unit.launch()
        except (StackError, OSError) as exc:       # e.g. its port is taken: try again after a backoff
            self._say(f"{watch.unit.name} could not start: {exc}")
            watch.proc, watch.exited_at = None, time.monotonic()
            watch.failures_in_row += 1
            self._wait(watch, watch.exited_at)
            return
        watch.state, watch.started_at = State.RUNNING, time.monotonic()

    def poll(self) -> None:
        """Notice exits, end what is left of their groups, restart after a backoff; call periodically."""
        if self.stopping:
            return
        now = time.monotonic()
        for watch in self.watches.values():
            if watch.state is State.RUNNING:
                self._check_exit(watch, now)
            if watch.state is State.REAPING:
                self._reap(watch, now)
            if watch.state is State.WAITING and now >= watch.deadline:
                watch.restarts += 1
                self._say(f"restarting {watch.unit.name} (restart #{watch.restarts})")
                self._launch(watch)

    def _check_exit(self, watch: Watch, now: float) -> None:
        assert watch.proc is not None
        code = watch.proc.poll()
        if code is None:
            return
        self._forget(watch.proc.pid)
        lived = now - watch.started_at
        watch.failures_in_row = 0 if lived > HEALTHY_AFTER_S else watch.failures_in_row + 1
        watch.history.append(code)
        watch.exited_at = now
        self._say(f"{watch.unit.name} exited with code {code} after {lived:.1f} s (log: {watch.unit.log_path})")
        signal_group(watch.proc.pid, signal.SIGTERM)      # a worker left behind drains and exits
        watch.state, watch.deadline = State.REAPING, now + self.group_grace_s

    def _reap(self, watch: Watch, now: float) -> None:
        assert watch.proc is not None
        if group_members(watch.proc.pid):
            if now < watch.deadline:
                return
            self._say(f"what was left of {watch.unit.name} did not exit in {self.group_grace_s:.0f} s; killing it")
            signal_group(watch.proc.pid, signal.SIGKILL)
            return                                          # gone by the next look
        self._wait(watch, watch.exited_at)

    def _wait(self, watch: Watch, since: float) -> None:
        delay = RESTART_BACKOFF_S[min(max(watch.failures_in_row - 1, 0), len(RESTART_BACKOFF_S) - 1)]
        watch.state, watch.deadline = State.WAITING, max(since + delay, time.monotonic())

    def run_forever(self, interval_s: float = 0.25) -> None:
        """Supervise until the caller's signal handler raises."""
        while True:
            self.poll()
            self.sleep(interval_s)

    def sleep(self, interval_s: float) -> None:
        """Until a unit's leader exits or a restart is due; `interval_s` while a dead unit's group is being
        ended (or where Linux cannot tell of an exit). Idle, nothing wakes the launcher."""
        now = time.monotonic()
        timeout: float | None = None
        exits: list[int] = []
        for watch in self.watches.values():
            if watch.state is State.REAPING:
                timeout = interval_s
            elif watch.state is State.WAITING:
                due = max(watch.deadline - now, 0.0)
                timeout = due if timeout is None else min(timeout, due)
            elif watch.state is State.RUNNING and watch.proc is not None:
                fd = self._exit_fd(watch.proc)
                if fd is None:
                    timeout = interval_s
                else:
                    exits.append(fd)
        if exits:
            select.select(exits, [], [], timeout)
        else:
            time.sleep(timeout if timeout is not None else interval_s)

    def _exit_fd(self, proc: subprocess.Popen[bytes]) -> int | None:
        """A descriptor that becomes readable when `proc` exits (a pidfd), kept while it runs."""
        fd = self._pidfds.get(proc.pid)
        if fd is None and hasattr(os, "pidfd_open"):
            try:
                fd = self._pidfds[proc.pid] = os.pidfd_open(proc.pid)
            except OSError:
                return None
        return fd

    def _forget(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every unit, tier by tier from the highest, each tier's units at once; kill what lingers."""
        self.stopping = True
        for tier in sorted({w.unit.tier for w in self.watches.values()}, reverse=True):
            self._stop_tier([w for w in self.watches.values() if w.unit.tier == tier], timeout_s)
        for pid in list(self._pidfds):
            self._forget(pid)

    def _stop_tier(self, watches: list[Watch], timeout_s: float) -> None:
        live = [(w, w.proc) for w in watches if w.proc is not None and w.state in (State.RUNNING, State.REAPING)]
        for watch, proc in live:
            if proc.poll() is None:
                proc.send_signal(watch.unit.stop_signal)
            else:
                signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while live and time.monotonic() < deadline:
            if any(proc.poll() is not None for _, proc in live):
                groups = live_groups()
                live = [(w, proc) for w, proc in live if proc.poll() is None or proc.pid in groups]
            time.sleep(0.02)
        for watch, proc in live:
            self._say(f"{watch.unit.name} did not stop in {timeout_s:.0f} s; killing it")
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        settled = time.monotonic() + 5.0
        while live and time.monotonic() < settled and any(proc.pid in live_groups() for _, proc in live):
            time.sleep(0.02)
        for watch in watches:
            watch.state = State.STOPPED

    def _say(self, text: str) -> None:
        if self.echo:
            print(f"switchyard: {text}", file=sys.stderr, flush=True)

