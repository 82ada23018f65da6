"""Any process may die: `switchyard up` with its own NATS, PostgreSQL and Valkey, killed piece by piece with kill -9.

One `up --demo` stack for the module. Each kill is measured (time until the stack is whole again)
and its figures printed (`pytest -s` shows them); calls run through the gateway meanwhile and the
log is held to account: one usage row per answered call.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.kit.stack_proc import pick_free_port, port_is_free
from tests.conftest import REPO, start_up, stop_up, traversable_tempdir, wait_for
from tests.e2e.accounting import Books, MixedLoad, held, usage_by_request
from tests.e2e.test_faults import Load, every_call_recorded_once

SERVICES = ("registry", "metering", "router", "quota", "gateway")
WORKERS = {"gateway": 2}      # the gateway runs two workers here, whatever the machine; every other service one


@dataclass
class Owned:
    """An `up --demo` that runs its own infrastructure (the fields Load and the usage checks read)."""

    proc: subprocess.Popen[bytes]
    root: Path
    data_dir: Path
    url: str
    key: str
    admin_key: str
    database_url: str

    def state(self) -> dict:
        return json.loads((self.data_dir / "stack.json").read_text())

    def port(self, name: str) -> int:
        return int(self.state()["ports"][name])

    def output(self) -> str:
        return (self.root / "up.log").read_text()


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}


@pytest.fixture(scope="module")
def owned() -> Iterator[Owned]:
    root = traversable_tempdir("switchyard-supervision-")
    port = pick_free_port(set())
    key, admin_key = f"sy_supdemo_{uuid.uuid4().hex}", f"sy_supadmin_{uuid.uuid4().hex}"
    env = {**_clean_env(), "SWITCHYARD_DEMO_KEY": key, "SWITCHYARD_ADMIN_KEY": admin_key}
    # The gateway's journal syncs to disk here (the cluster tests kill gateways whose journal does not).
    proc = start_up(["--demo", "--data-dir", str(root / "data"), "--port", str(port), "--no-fsync", "--journal-fsync",
                     "--gateway-workers", str(WORKERS["gateway"])], env, root / "up.log")
    database_url = running_url(root / "data", "database_url")
    limits = httpx.put(f"http://127.0.0.1:{port}/api/admin/tenants/demo/limits", headers={"X-API-Key": admin_key},
                       json={"daily_tokens": 10**12}, timeout=10)       # every call reserves in Valkey
    assert limits.status_code == 200, limits.text
    try:
        yield Owned(proc, root, root / "data", f"http://127.0.0.1:{port}", key, admin_key, database_url)
    finally:
        stop_up(proc)
        print("\n" + "\n".join(line for line in (root / "up.log").read_text().splitlines()
                                if line.startswith("switchyard:")))
        shutil.rmtree(root, ignore_errors=True)


# ---- processes ---------------------------------------------------------------------------------


def _live(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def copies(up_pid: int, service: str) -> list[psutil.Process]:
    """Every live process of a service under `up` (mains, workers, and orphans `up` adopted)."""
    found = []
    for process in psutil.Process(up_pid).children(recursive=True):
        try:
            if _live(process) and process.cmdline()[-2:] == ["-m", f"switchyard_gateway.services.{service}"]:
                found.append(process)
        except psutil.Error:
            continue
    return found


def main_and_workers(up_pid: int, service: str) -> tuple[psutil.Process, list[psutil.Process]]:
    """The one main (a child of `up`) and its workers (WORKERS of them); AssertionError when there are more or
    fewer."""
    found = copies(up_pid, service)
    mains = [p for p in found if p.ppid() == up_pid]
    expected = WORKERS.get(service, 1)
    assert len(mains) == 1 and len(found) == 1 + expected, f"{service}: {[(p.pid, p.ppid()) for p in found]}"
    workers = [p for p in found if p is not mains[0]]
    assert all(w.ppid() == mains[0].pid for w in workers), f"{service}: workers not all children of {mains[0].pid}"
    return mains[0], workers


def _healthy(stack: Owned, service: str, old_pids: set[int]) -> bool:
    """Exactly one copy, none of `old_pids` in it, answering /health."""
    try:
        main, workers = main_and_workers(stack.proc.pid, service)
    except (AssertionError, psutil.Error):
        return False
    if {main.pid, *(w.pid for w in workers)} & old_pids:
        return False
    try:
        return httpx.get(f"http://127.0.0.1:{stack.port(service)}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _kill_and_time(stack: Owned, pick: str) -> dict[str, float]:
    """kill -9 one process of every service at once ('main' or 'worker': of the gateway's, its first);
    seconds until each is whole again. A main takes its workers with it; a worker is replaced, alone (the
    gateway's, whose main forks a new one) or with its main (granian's)."""
    old: dict[str, set[int]] = {}
    for service in SERVICES:
        main, workers = main_and_workers(stack.proc.pid, service)
        victim = main if pick == "main" else workers[0]
        old[service] = {main.pid, *(w.pid for w in workers)} if pick == "main" else {victim.pid}
        victim.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    recovered: dict[str, float] = {}

    def whole() -> bool:
        for service in SERVICES:
            if service not in recovered and _healthy(stack, service, old[service]):
                recovered[service] = round(time.monotonic() - killed, 2)
        return len(recovered) == len(SERVICES)

    await wait_for(whole, timeout_s=60, interval_s=0.1, what=f"every service whole again after its {pick} was killed")
    for service in SERVICES:                      # nothing of the old copies is left, not even as an orphan
        assert not any(psutil.pid_exists(pid) and _live(psutil.Process(pid)) for pid in old[service]), service
    return recovered


# ---- ports -------------------------------------------------------------------------------------


def _up(data_dir: Path, port: int, timeout_s: float = 30) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(data_dir),
                           "--port", str(port)], capture_output=True, text=True, env=_clean_env(), cwd=REPO,
                          timeout=timeout_s)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_a_service_that_refuses_its_settings_stops_up_with_its_own_words() -> None:
    """A setting a service refuses only reached its log: `up` restarted it for a minute and then blamed a timeout
    (or, for one not on the gateway's path, said "Switchyard is up" over a service that never ran)."""
    root = traversable_tempdir("switchyard-refusal-")
    env = {**_clean_env(), "SWITCHYARD_PROBE_INTERVAL_S": "-1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(root / "d"),
                           "--port", str(pick_free_port(set())), "--no-fsync"], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "router refuses to start: SWITCHYARD_PROBE_INTERVAL_S must be a number of seconds above 0" in output
    assert "Switchyard is up" not in output and time.monotonic() - started < 45, output
    shutil.rmtree(root, ignore_errors=True)


def test_no_other_user_may_read_or_write_what_the_stack_keeps(owned: Owned) -> None:
    """Valkey's files (the quota's counters, cached answers), the logs (tenants, keys' ids) and stack.json were
    readable by every user of the machine, in a data dir anyone could list."""
    exposed = [str(path) for path in owned.data_dir.rglob("*")
               if not path.is_symlink() and not path.is_socket() and path.stat().st_mode & 0o066]
    assert exposed == []
    assert owned.data_dir.stat().st_mode & 0o066 == 0           # traversable for PostgreSQL's own user at most


def test_second_up_on_the_same_port_refuses_at_once_naming_the_holder(owned: Owned) -> None:
    port = int(owned.url.rsplit(":", 1)[1])
    code, output, took = _up(owned.root / "second", port)
    assert code == 1, output
    assert f"port {port} (gateway)" in output and "switchyard_gateway.services.gateway" in output, output
    assert took < 2.0 + 3.0, took        # refused before anything started (3 s: the interpreter's own start)
    assert len(output.strip().splitlines()) == 1, output
    assert not (owned.root / "second" / "logs").exists(), "something was started"


def test_port_held_by_another_program_is_refused_with_its_name(tmp_path: Path) -> None:
    port = pick_free_port(set())
    squatter = tmp_path / "port_squatter.py"
    squatter.write_text("import socket, sys, time\n"
                        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
                        "print('ready', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, str(squatter), str(port)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        code, output, _ = _up(tmp_path / "data", port)
        assert code == 1, output
        assert f"port {port} (gateway)" in output and f"pid {holder.pid}" in output and "port_squatter.py" in output
    finally:
        holder.kill()
        holder.wait()


# ---- kill -9 -----------------------------------------------------------------------------------


async def test_kill_9_of_any_service_main_or_worker_ends_with_exactly_one_healthy_copy(owned: Owned) -> None:
    for pick in ("main", "worker"):
        recovered = await _kill_and_time(owned, pick)
        print(f"\nkill -9 of every service's {pick}: whole again after {recovered} s")
    reply = httpx.post(f"{owned.url}/v1/chat/completions", headers={"Authorization": f"Bearer {owned.key}"},
                       json={"model": "llama3.2", "messages": [{"role": "user", "content": "still there?"}]},
                       timeout=30)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("component", ["nats", "postgres", "valkey"])
async def test_infrastructure_killed_under_load_is_restarted_and_no_usage_is_lost(owned: Owned, component: str) -> None:
    load = Load(owned, f"{component}-{uuid.uuid4().hex[:8]}")  # type: ignore[arg-type]
    task = asyncio.create_task(load.run())
    await wait_for(lambda: len(load.answered) >= 50, timeout_s=20, what="the load under way")
    pid, port = owned.state()["pids"][component], owned.port(component)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    await wait_for(lambda: _serving_again(owned, component, pid, port), timeout_s=30, interval_s=0.05,
                   what=f"{component} restarted by up")
    back_after = time.monotonic() - killed
    answered_at_return = len(load.answered)
    await wait_for(lambda: len(load.answered) >= answered_at_return + 50, timeout_s=30, what="calls after the restart")
    load.running = False
    await task
    accepted = len(load.answered) + len(load.failed)
    served = len(load.answered) / accepted
    print(f"\nkill -9 {component}: back after {back_after:.2f} s; calls {accepted}, served {len(load.answered)}"
          f" ({served:.2%}), failed {sorted(set(load.failed))}")
    assert served >= 0.99, load.failed
    await every_call_recorded_once(owned, load, timeout_s=60)    # type: ignore[arg-type]
    print(f"kill -9 {component}: usage events {len(load.answered)} = answered calls, lost 0")


def _serving_again(stack: Owned, component: str, old_pid: int, port: int) -> bool:
    pid = stack.state()["pids"].get(component)
    if not pid or pid == old_pid or not psutil.pid_exists(pid):
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---- the gateway's journal -----------------------------------------------------------------------


async def test_a_gateway_worker_killed_after_it_served_is_replaced_while_the_other_serves(owned: Owned) -> None:
    """The gateway's main ended every worker when one died, and the port refused connections for seconds until the
    supervisor had started the gateway again (a chaos run under load: 72,000 refused in 8 minutes); the main now
    forks a replacement for a worker that had served, and the other worker serves meanwhile."""
    main, workers = main_and_workers(owned.proc.pid, "gateway")
    await wait_for(lambda: all(time.time() - w.create_time() > 12 for w in workers), timeout_s=30,
                   what="both workers past their start")
    answered: list[int] = []
    failed: list[str] = []
    limits = httpx.Limits(max_keepalive_connections=0)       # a new connection each call: the kernel picks a worker
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        async def call() -> None:
            try:
                reply = await client.get(f"{owned.url}/v1/models", headers={"Authorization": f"Bearer {owned.key}"})
                answered.append(reply.status_code)
            except httpx.HTTPError as exc:
                failed.append(type(exc).__name__)

        workers[0].send_signal(signal.SIGKILL)
        until = time.monotonic() + 6
        while time.monotonic() < until:
            await call()
        await wait_for(lambda: _healthy(owned, "gateway", {workers[0].pid}), timeout_s=60, what="a new worker")
    again, now = main_and_workers(owned.proc.pid, "gateway")
    assert again.pid == main.pid and workers[1].pid in {w.pid for w in now}, "replaced alone, not restarted whole"
    assert len(failed) <= 2 and answered.count(200) >= 20, (len(answered), failed)   # at most one in flight, cut


def _simulators(stack: Owned, **knobs: float) -> None:
    for name in ("sim-ollama", "sim-openai"):
        reply = httpx.post(f"http://127.0.0.1:{stack.port(name)}/_sim/config", json=knobs, timeout=10)
        assert reply.status_code == 200, reply.text


async def test_gateway_killed_mid_stream_records_every_accepted_call_once_and_releases_its_holds(owned: Owned) -> None:
    """kill -9 of the gateway's workers (both), then of its main, under streamed (1.6 s) and plain calls that all reserve
    quota: every call that got a status has one usage event (those cut by the kill: `interrupted`, recorded by the
    gateway's next life from its journal), none has two, and no quota stays held."""
    redis_url = running_url(owned.data_dir, "redis_url")
    _simulators(owned, token_interval_ms=100)
    try:
        for pick in ("worker", "main"):
            load = MixedLoad(owned.url, owned.key, f"journal-{pick}-{uuid.uuid4().hex[:8]}")
            task = asyncio.create_task(load.run())
            await wait_for(lambda: load.answered >= 20 and len(load.streaming) >= 4, timeout_s=30,
                           what="streams under way")
            main, workers = main_and_workers(owned.proc.pid, "gateway")
            streams_cut = len(load.streaming)
            victims = workers if pick == "worker" else [main]         # every worker: each may hold streams
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            before_kill = set(load.seen)
            gone = {v.pid for v in victims} if pick == "worker" else {main.pid, *(w.pid for w in workers)}
            await wait_for(lambda: _healthy(owned, "gateway", gone), timeout_s=60, interval_s=0.1,
                           what="the gateway whole again")
            back_after = time.monotonic() - killed
            async def released() -> bool:
                return not before_kill & set(await held(redis_url, owned.database_url, load.prefix))

            await wait_for(released, timeout_s=30, interval_s=0.1, what="no quota held by the calls the kill cut")
            released_after = time.monotonic() - killed
            answered = load.answered
            await wait_for(lambda: load.answered >= answered + 20, timeout_s=30, what="calls answered again")
            load.running = False
            await task

            async def recorded() -> Books | None:
                books = Books(dict(load.seen), await usage_by_request(owned.database_url, load.prefix))
                return books if not books.lost and not await held(redis_url, owned.database_url, load.prefix) else None

            books = await wait_for(recorded, timeout_s=60, interval_s=0.25, what="every call with a status recorded")
            books.check()
            print(f"\nkill -9 of the gateway's {pick} under mixed load: back after {back_after:.2f} s, holds of "
                  f"the calls it cut released {released_after:.2f} s after the kill; calls {len(load.seen)} "
                  f"({dict(load.count())}), streams in flight at the kill {streams_cut}; usage events "
                  f"{len(books.usage)} ({len(books.interrupted)} interrupted), lost {len(books.lost)}, "
                  f"duplicated {len(books.duplicated)}")
            if pick == "worker":             # a crash: what was in flight can only come from the journal
                assert books.interrupted, "no call was recorded as interrupted"
    finally:
        _simulators(owned, token_interval_ms=0)


# ---- stop --------------------------------------------------------------------------------------


async def test_sigterm_under_load_stops_everything_quickly_leaves_nothing_and_loses_no_usage(owned: Owned) -> None:
    load = Load(owned, f"stop-{uuid.uuid4().hex[:8]}", until_refused=True)  # type: ignore[arg-type]
    task = asyncio.create_task(load.run())
    await wait_for(lambda: len(load.answered) >= 100, timeout_s=20, what="the load under way")
    everything = psutil.Process(owned.proc.pid).children(recursive=True)
    ports = [int(p) for p in owned.state()["ports"].values()]
    said_before = len(owned.output())
    started = time.monotonic()
    owned.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(owned.proc.wait, 30)
    took = time.monotonic() - started
    load.running = False
    await task
    print(f"\nSIGTERM under load: stopped in {took:.2f} s; {len(load.answered)} calls answered")
    assert code == 0 and load.failed == []
    assert [p.pid for p in everything if _live(p)] == []
    assert [port for port in ports if not port_is_free(port)] == []
    said = owned.output()[said_before:]             # what the stop said (earlier tests killed things on purpose)
    assert "did not stop" not in said and "killing it" not in said

    again = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(owned.data_dir),
                              "--no-fsync", "--port", owned.url.rsplit(":", 1)[1]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_clean_env(), cwd=REPO)
    try:                                           # the next life of the stack records every answered call once
        await every_call_recorded_once(owned, load, timeout_s=90)    # type: ignore[arg-type]
    finally:
        again.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(again.wait, 30) == 0
