"""Ports a stack owns: a free check that sees SO_REUSEPORT listeners too, and who holds a busy port.

granian listens with SO_REUSEPORT, so a second server bound to a port already served would
share it silently. The check here binds without SO_REUSEPORT: any listener on the address,
reuse-port or not, makes it fail. Replicas of one stack that share a port on purpose (the
gateways `up --replicas` starts) say so: a port held only by other processes of the same
launcher may be shared (`shared_within`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import psutil

from switchyard_gateway.kit.stack_proc import StackError, port_is_free

PORT_IN_USE_EXIT = 98          # a service's exit code when its port is taken (EADDRINUSE on Linux)


class PortInUse(StackError):
    """A port the stack needs is taken; the message names the port, its use and, when known, the holder."""

    def __init__(self, port: int, use: str, host: str, holder: str | None) -> None:
        held = f" by {holder}" if holder else ""
        super().__init__(f"port {port} ({use}) on {host or '0.0.0.0'} is already in use{held}")
        self.port, self.use, self.host, self.holder = port, use, host, holder


def holder(port: int) -> str | None:
    """'pid N (command line)' of a process listening on port, or None when it cannot be told."""
    pids = listeners(port)
    if not pids:
        return None
    return ", ".join(describe(pid) for pid in sorted(pids))


def listeners(port: int) -> set[int] | None:
    """The pids listening on a TCP port, or None when the kernel's table cannot be read."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    return {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            and c.pid}


def shared_within(port: int, launcher_pid: int) -> bool:
    """True when every process listening on `port` descends from `launcher_pid` (replicas of one stack), so that
    another replica may listen there too; False when any other process does, or when it cannot be told."""
    if launcher_pid <= 0:
        return False
    pids = listeners(port)
    if not pids:
        return False
    for pid in pids:
        try:
            if launcher_pid not in {parent.pid for parent in psutil.Process(pid).parents()}:
                return False
        except psutil.Error:
            return False
    return True


def describe(pid: int) -> str:
    """'pid N (argv, shortened)', with 'this process' when it is ourselves."""
    if pid == os.getpid():
        return f"pid {pid} (this process)"
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return f"pid {pid}"
    shown = " ".join(" ".join([os.path.basename(argv[0]), *argv[1:]]).split()) if argv else "?"
    return f"pid {pid} ({shown[:120]})"


def check_free(needed: Mapping[str, tuple[str, int]]) -> None:
    """Raise PortInUse for the first port of `needed` ({use: (host, port)}) that something listens on."""
    seen: dict[int, str] = {}
    for use, (host, port) in needed.items():
        if port in seen:
            raise StackError(f"port {port} is asked for twice: {seen[port]} and {use}")
        seen[port] = use
        if not port_is_free(port, host):
            raise PortInUse(port, use, host, holder(port))
