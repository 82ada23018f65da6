"""CPU time of the `switchyard up` process tree, grouped by service, simulator and infrastructure server.

Each direct child of the `up` process heads a group (a service and its granian worker; a
simulator; nats-server; postgres and its backends; valkey-server). A group's CPU is the sum,
over its live processes, of user + system time plus the time of children they have reaped, so a
PostgreSQL backend that exits between two snapshots still counts once, in its postmaster.
"""

from __future__ import annotations

import time

import psutil

INFRA = {"nats-server": "nats", "postgres": "postgres", "valkey-server": "valkey"}
SERVICES = ("gateway", "router", "quota", "metering", "registry", "launcher")
INFRA_GROUPS = ("nats", "postgres", "valkey")

Snapshot = dict[str, float]


class ProcessTree:
    """Takes CPU snapshots of the tree under `root_pid`; simulators are named by their port."""

    def __init__(self, root_pid: int, sim_names: dict[int, str]) -> None:
        self.root = psutil.Process(root_pid)
        self.sim_names = sim_names  # port -> endpoint id, e.g. {27412: "ollama-1"}

    def snapshot(self) -> Snapshot:
        """Seconds of CPU used so far, per group, plus "machine_busy" for the whole machine."""
        groups: Snapshot = {"launcher": _own(self.root)}
        for child in self.root.children():
            try:
                name = self._group(child)
                procs = [child, *child.children(recursive=True)]
            except psutil.Error:
                continue
            groups[name] = groups.get(name, 0.0) + sum(_with_reaped(p) for p in procs)
        t = psutil.cpu_times()
        groups["machine_busy"] = t.user + t.nice + t.system + t.irq + t.softirq
        return groups

    def groups(self) -> dict[str, list[psutil.Process]]:
        """Each group's live processes now, the launcher (the root) included."""
        found: dict[str, list[psutil.Process]] = {"launcher": [self.root]}
        for child in self.root.children():
            try:
                found.setdefault(self._group(child), []).extend([child, *child.children(recursive=True)])
            except psutil.Error:
                continue
        return found

    def pids(self) -> set[int]:
        """The tree's processes now, the root included."""
        try:
            return {self.root.pid, *(p.pid for p in self.root.children(recursive=True))}
        except psutil.Error:
            return {self.root.pid}

    def members(self) -> dict[str, list[str]]:
        """Which processes each group holds now: for the report, to show what was counted."""
        found: dict[str, list[str]] = {}
        for group, procs in self.groups().items():
            for p in procs:
                try:
                    found.setdefault(group, []).append(f"{p.pid} {p.name()}")
                except psutil.Error:
                    continue
        return found

    def _group(self, proc: psutil.Process) -> str:
        name = proc.name()
        if name in INFRA:
            return INFRA[name]
        cmd = proc.cmdline()
        if "switchyard_gateway.simulator" in cmd and "--port" in cmd:
            port = int(cmd[cmd.index("--port") + 1])
            return "sim:" + self.sim_names.get(port, str(port))
        if "-m" in cmd:
            module = cmd[cmd.index("-m") + 1]
            if module.startswith("switchyard_gateway.services."):
                return module.split(".")[2]
        return name


def wait_until_quiet(max_busy_cores: float, within_s: float, sample_s: float = 3.0) -> float:
    """Sample the machine's busy cores until a sample is at most `max_busy_cores` or `within_s` passes; return the last."""
    deadline = time.monotonic() + within_s
    while True:
        busy = psutil.cpu_percent(interval=sample_s) / 100 * (psutil.cpu_count() or 1)
        if busy <= max_busy_cores or time.monotonic() > deadline:
            return round(busy, 2)


def every_process() -> dict[tuple[int, float], tuple[str, float]]:
    """(pid, start time) -> (name and command line, user + system seconds) for every process we can read."""
    out = {}
    for p in psutil.process_iter(["name", "cmdline", "create_time", "cpu_times"]):
        info = p.info
        if info["cpu_times"] is None:
            continue
        command = " ".join(" ".join(info["cmdline"] or [info["name"] or ""]).split())  # one line
        label = f"{p.pid} {command}"[:100]
        out[(p.pid, info["create_time"])] = (label, info["cpu_times"].user + info["cpu_times"].system)
    return out


def busiest_others(before: dict, after: dict, exclude: set[int], top: int = 3) -> list[dict]:
    """The processes outside `exclude` that used the most CPU between two `every_process` snapshots."""
    used = []
    for key, (label, cpu) in after.items():
        if key[0] in exclude:
            continue
        seconds = cpu - before.get(key, (label, 0.0))[1]
        if seconds >= 0.05:
            used.append({"process": label, "cpu_s": round(seconds, 2)})
    return sorted(used, key=lambda u: -u["cpu_s"])[:top]


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """CPU seconds per group between two snapshots, with totals for Switchyard, infra and simulators."""
    out = {name: after[name] - before.get(name, 0.0) for name in after}
    out["switchyard_total"] = sum(out.get(name, 0.0) for name in SERVICES)
    out["infra_total"] = sum(out.get(name, 0.0) for name in INFRA_GROUPS)
    out["sims_total"] = sum(v for name, v in out.items() if name.startswith("sim:"))
    return out


def _own(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _with_reaped(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system
