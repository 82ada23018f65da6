"""`switchyard up` as a user runs it: its own embedded servers, crash restarts, clean stops, data kept."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil

from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, DemoStack, traversable_tempdir, wait_for


def service_process(root_pid: int, service: str) -> psutil.Process:
    """The running process of one service (granian's main process) under an `up` process."""
    for child in psutil.Process(root_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and child.cmdline()[-2:] == ["-m", f"switchyard_gateway.services.{service}"]:
                return child
        except psutil.Error:        # exited meanwhile, or a zombie nobody reaped
            continue
    raise LookupError(service)


async def test_crashed_service_is_restarted_and_usage_still_lands(demo: DemoStack) -> None:
    from tests.e2e.test_demo import client, exactly_one_usage_row

    victim = service_process(demo.proc.pid, "metering")
    for process in [*victim.children(recursive=True), victim]:
        process.kill()
    request_id = uuid.uuid4().hex
    reply = client(demo).chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "while metering is down"}],
        extra_headers={"X-Request-Id": request_id})
    assert reply.choices[0].message.content
    await wait_for(lambda: _replaced(demo.proc.pid, "metering", victim.pid), timeout_s=30,
                   what="metering restarted by the supervisor")
    event = await exactly_one_usage_row(demo, request_id)
    assert event["outcome"] == "ok"


async def test_sighup_without_a_users_file_reloads_nothing_and_up_serves_on(demo: DemoStack) -> None:
    """SIGHUP's default ended `up` and everything it ran (a terminal hanging up, or an operator asking for a
    reload); now it reads `--nats-users` again, and without one `up` says there is nothing to reload."""
    before = demo.output().count("switchyard: SIGHUP: ")
    demo.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: demo.output().count("switchyard: SIGHUP: ") > before, 10, what="up to answer SIGHUP")
    said = [line for line in demo.output().splitlines() if line.startswith("switchyard: SIGHUP: ")][before]
    assert said == ("switchyard: SIGHUP: no --nats-users file to read again; nothing reloaded (SIGINT or SIGTERM "
                    "stops `up`)")
    assert demo.proc.poll() is None
    models = httpx.get(f"{demo.url}/v1/models", headers={"Authorization": f"Bearer {demo.demo_key}"}, timeout=10)
    assert models.status_code == 200 and demo.proc.poll() is None


def _replaced(root_pid: int, service: str, old_pid: int) -> bool:
    try:
        return service_process(root_pid, service).pid != old_pid
    except LookupError:
        return False


def _start(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(data_dir.parent / f"{data_dir.name}-up-{time.monotonic_ns()}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(data_dir),
                             "--port", str(port), "--no-fsync"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)


def _wait_up(proc: subprocess.Popen[bytes], url: str, key: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "switchyard up exited early"
        try:
            if httpx.get(url, headers={"X-API-Key": key}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("switchyard up did not come up")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> tuple[int, list[psutil.Process]]:
    descendants = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    code = proc.wait(60)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    return code, [p for p in alive if _running(p)]


def _running(process: psutil.Process) -> bool:
    """Alive and not a zombie (this machine's init does not reap orphans; a zombie runs nothing)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_stops_cleanly_and_a_second_up_keeps_the_data() -> None:
    root = traversable_tempdir("switchyard-up-")
    data_dir = root / "data"
    port = pick_free_port(set())
    admin_key = f"sy_e2eadmin_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_ADMIN_KEY"] = admin_key
    url = f"http://127.0.0.1:{port}"

    first = _start(data_dir, port, env)
    try:
        _wait_up(first, f"{url}/api/admin/tenants", admin_key)
        created = httpx.post(f"{url}/api/admin/tenants", headers={"X-API-Key": admin_key},
                             json={"tenant_id": "kept-tenant", "display_name": "Survives restarts"})
        assert created.status_code == 201, created.text
        # a second `up` on the same data dir is refused, having changed nothing there: it took o+x from the data
        # dir that a root-run PostgreSQL's user passes through, and the running cluster panicked at its checkpoint
        left = data_dir / "logs" / "left-readable.txt"
        left.write_text("an operator's file")
        left.chmod(0o644)
        modes = stat.S_IMODE(data_dir.stat().st_mode), stat.S_IMODE(left.stat().st_mode)
        refused = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(data_dir),
                                  "--port", str(pick_free_port({port})), "--no-fsync"], capture_output=True, text=True,
                                 env=env, cwd=REPO, timeout=60)
        assert refused.returncode == 1 and "is in use by another launcher" in refused.stderr, refused.stderr
        assert (stat.S_IMODE(data_dir.stat().st_mode), stat.S_IMODE(left.stat().st_mode)) == modes
        assert httpx.get(f"{url}/api/admin/tenants", headers={"X-API-Key": admin_key}).status_code == 200
    finally:
        code, alive = _stop(first, signal.SIGINT)
    assert code == 0
    assert alive == [], f"processes left running after Ctrl-C: {[p.pid for p in alive]}"

    second = _start(data_dir, port, {**env, "SWITCHYARD_WORKERS": "1"})       # up ran one worker per core anyway
    try:
        _wait_up(second, f"{url}/api/admin/tenants", admin_key)
        tenants = httpx.get(f"{url}/api/admin/tenants", headers={"X-API-Key": admin_key}).json()
        assert "kept-tenant" in {t["tenant_id"] for t in tenants}
        gateways = [p for p in psutil.Process(second.pid).children(recursive=True)
                    if "switchyard_gateway.services.gateway" in " ".join(p.cmdline())]
        assert len(gateways) == 1, "one worker: the gateway's own process, no main above it"
    finally:
        code, alive = _stop(second, signal.SIGTERM)
    assert code == 0 and alive == []
    shutil.rmtree(root, ignore_errors=True)
