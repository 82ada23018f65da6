"""The built distribution, installed outside the checkout, runs `switchyard up --demo` and answers a call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import REPO, create_database, run_sync, traversable_tempdir

TOP_LEVEL = "switchyard_gateway"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (path,) = out.glob("switchyard_gateway-*.whl")
    return path


def test_wheel_installs_one_namespace_with_every_package_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith((".dist-info", ".data"))}
    assert top == {TOP_LEVEL}, f"the wheel claims other top-level names: {sorted(top)}"
    folders = {"libs": TOP_LEVEL, "services": f"{TOP_LEVEL}/services", "cli": f"{TOP_LEVEL}/cli"}
    for folder, installed in folders.items():       # every package folder of the checkout is in the wheel
        for init in (REPO / folder).rglob("__init__.py"):
            member = f"{installed}/{init.relative_to(REPO / folder).as_posix()}"
            assert member in names, f"{init.relative_to(REPO)} is missing from the wheel (pyproject.toml packages)"
    assert any(name.startswith(f"{TOP_LEVEL}/kit/migrations/") and name.endswith(".sql") for name in names)


def test_wheel_runs_up_demo_outside_the_checkout(wheel: Path, urls: StackUrls) -> None:
    root = traversable_tempdir("switchyard-wheel-")
    venv = root / "venv"
    # The test environment's packages (NATS, PostgreSQL, Valkey binaries and the rest) are reused; the
    # venv's own site-packages come first, so `switchyard_gateway` is imported from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    where = subprocess.run([str(python), "-c", f"import {TOP_LEVEL}; print({TOP_LEVEL}.__file__)"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"imported from {where}, not from the installed wheel"

    database_url = run_sync(create_database(urls.database_url, f"wheel_{os.getpid()}"))
    port = pick_free_port(set())
    env = {key: value for key, value in os.environ.items() if not key.startswith("SWITCHYARD_")}
    # NATS of its own: on the session's, this demo's registry would re-point the shared demo's endpoints at
    # simulators that stop with it (the REGISTRY stream is one per NATS server).
    env |= {"SWITCHYARD_DATABASE_URL": database_url, "SWITCHYARD_REDIS_URL": urls.redis_url, "PYTHONPATH": ""}
    log_path = root / "up.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(venv / "bin" / "switchyard"), "up", "--demo", "--data-dir", str(root / "data"),
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        try:
            deadline = time.monotonic() + 120
            while b"Switchyard is up" not in log_path.read_bytes():
                assert proc.poll() is None, "up exited:\n" + log_path.read_text()
                assert time.monotonic() < deadline, "up did not start:\n" + log_path.read_text()
                time.sleep(0.2)
            keys = dict(line.split("=", 1) for line in (root / "data" / "keys.env").read_text().split())
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30,
                               headers={"Authorization": f"Bearer {keys['SWITCHYARD_DEMO_KEY']}"},
                               json={"model": "llama3.2", "messages": [{"role": "user", "content": "from a wheel"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert proc.returncode == 0, log_path.read_text()
