"""Process plumbing for the embedded stack: free ports, children that die with us, deadlines, log tails."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
SOCKET_PATH_MAX = 107         # bytes of a Unix socket's path: sun_path is 108 with the terminating NUL
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36
_FALLBACK_EPHEMERAL_LOW = 32768


class StackError(RuntimeError):
    """A component of the embedded stack could not be started, reached or stopped."""


# ---- ports ------------------------------------------------------------------------------------


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port.

    The probe sets SO_REUSEADDR (a socket in TIME_WAIT does not count, as for our servers) but not
    SO_REUSEPORT, so a listener that allows port sharing (granian's) still makes the port busy.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW


def kept_secret(path: Path) -> str:
    """The password kept in `path` (only its owner may read it), made the first time it is asked for: what an
    embedded server asks its clients for, so that another user of the machine cannot use it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_private(scratch, secrets.token_urlsafe(24) + "\n")      # URL-safe: it goes into URLs as it is
    try:
        os.link(scratch, path)                      # a launcher racing this one keeps whichever came first
    except FileExistsError:
        pass
    finally:
        scratch.unlink(missing_ok=True)
    return path.read_text().strip()


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file only its owner may read (made so, never widened after): a password, or a server's configuration
    holding one; never through a link in its place (as root, in a directory another user owns, one to /etc/passwd
    would be written over)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def pick_free_port(taken: set[int]) -> int:
    """A free loopback port below the kernel's ephemeral range.

    Outgoing connections take their local ports from the ephemeral range; a server port chosen
    there could be grabbed by some client while the server is stopped for a fault test.
    """
    low = _ephemeral_low()
    if low > 11024:
        rng = random.Random()
        for _ in range(200):
            port = rng.randrange(max(10000, low - 12000), low)
            if port not in taken and port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # odd port range: ask the kernel
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


# ---- child processes --------------------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl


def _set_death_signal(prctl: Callable[..., int], death_signal: int, parent_pid: int) -> None:
    prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def die_with_parent(death_signal: int, parent_pid: int) -> None:
    """Ask Linux to send death_signal to this process when its parent dies; exit now if it already has."""
    prctl = _prctl()
    if prctl is not None:
        _set_death_signal(prctl, death_signal, parent_pid)


def _die_with_parent(death_signal: int) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to signal the child when the thread that spawned it dies."""
    prctl = _prctl()  # resolved before fork, not in the child
    if prctl is None:
        return None
    parent_pid = os.getpid()
    return lambda: _set_death_signal(prctl, death_signal, parent_pid)


def become_subreaper() -> None:
    """Adopt the orphans of our descendants (Linux): none outlives us unseen, and we reap them."""
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def live_groups() -> dict[int, list[int]]:
    """Process group id -> its live processes, from one pass over /proc; adopted zombies are reaped."""
    groups: dict[int, list[int]] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, ppid, group, pid = fields[0], int(fields[1]), int(fields[3]), int(entry.name)
        if state not in ("Z", "X") or (ppid == me and pid != group and not _reaped(pid)):
            groups.setdefault(group, []).append(pid)
    return groups


def _reaped(pid: int) -> bool:
    """Reap an orphan we adopted as subreaper, now dead (group leaders are our own children: Popen reaps them).
    False while it cannot be reaped yet: a process whose main thread has exited is shown as a zombie until its
    other threads have too, and until then it still counts as part of its group."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def group_members(pgid: int) -> list[int]:
    """The live processes of one process group."""
    return live_groups().get(pgid, [])


def signal_group(pgid: int, signum: int) -> None:
    """Send signum to every process of a group; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def spawn(
    args: list[str],
    log_path: Path,
    *,
    death_signal: int,
    user: int | None = None,
    group: int | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start args in its own session with output appended to log_path; it gets death_signal if we die."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n---- {stamp} switchyard starts: {' '.join(args)}\n".encode())
        log.flush()
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops servers in order
            preexec_fn=_die_with_parent(death_signal),
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            cwd=cwd,
            env=env,
        )


class Spawner:
    """Spawns children from one long-lived thread.

    PR_SET_PDEATHSIG fires when the spawning *thread* ends, so children started from a short-lived
    worker thread would die with it; funnelling every spawn through this thread ties them to the
    stack instead, whichever thread asks.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stack-spawner")

    def call(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def pid_alive(pid: int) -> bool:
    """True when pid runs (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    """The argv of pid, or [] when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_path(pid: int, link: str) -> Path | None:
    """Where /proc/<pid>/<link> (exe, cwd) points, or None when it cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/{link}"))
    except OSError:
        return None


def _kill_group(pid: int) -> None:
    """SIGKILL pid's whole process group when pid leads it (all our children do), else pid alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_process(proc: subprocess.Popen[bytes], *, stop_signal: int, timeout_s: float, send: bool = True) -> None:
    """Send stop_signal (unless already sent), wait up to timeout_s, then SIGKILL the process group; always reaps."""
    if proc.poll() is None and stop_signal != signal.SIGKILL:
        if send:
            proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        _kill_group(proc.pid)
        proc.wait()
    try:  # workers the leader left behind (e.g. postgres backends after a SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pid(pid: int, *, stop_signal: int, timeout_s: float) -> None:
    """Stop a process that is not our child (left by a dead launcher): signal, wait, SIGKILL."""
    try:
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        return
    if not wait_until(lambda: not pid_alive(pid), timeout_s=timeout_s):
        _kill_group(pid)
        wait_until(lambda: not pid_alive(pid), timeout_s=5.0)


# ---- waiting ----------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.05,
    on_poll: Callable[[], None] | None = None,
) -> bool:
    """Poll condition until it holds (True) or timeout_s passes (False); on_poll may raise to give up."""
    deadline = time.monotonic() + timeout_s
    while True:
        if on_poll is not None:
            on_poll()
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh loop in a helper thread (safe inside a running loop)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(factory())
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="stack-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 16384))
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
