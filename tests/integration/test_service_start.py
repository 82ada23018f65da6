"""A service that cannot start says why in one line, and one told to stop while starting stops at once.

Both HTTP servers are covered: the gateway on ours, the quota service on granian. NATS is pointed at a port
nothing listens on, so start-up waits in its connect loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from switchyard_gateway.kit.stack_proc import pick_free_port

from tests.conftest import wait_for

SERVICES = ["gateway", "quota"]


def start(service: str, log: Path, connect_timeout_s: float, workers: int = 1) -> subprocess.Popen[bytes]:
    nowhere = pick_free_port(set())
    port = pick_free_port({nowhere})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
           "SWITCHYARD_NATS_URL": f"nats://127.0.0.1:{nowhere}", "SWITCHYARD_PORT": str(port),
           "SWITCHYARD_CONNECT_TIMEOUT_S": str(connect_timeout_s), "SWITCHYARD_LOG_JSON": "true",
           "SWITCHYARD_WORKERS": str(workers)}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", f"switchyard_gateway.services.{service}"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def events(log: Path) -> list[dict]:
    """The JSON lines of a service's log. Its workers share the file with the main (one stdout, not opened to
    append): a line two of them wrote at the same moment can come out joined, and is passed over."""
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_whose_nats_is_away_exits_naming_it_in_one_line(service: str, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    proc = start(service, log, connect_timeout_s=2)
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    text = log.read_text()
    assert code == 1, text[-800:]
    failed = [e for e in events(log) if e["event"] == "service.start_failed"]
    assert len(failed) == 1, text[-800:]
    assert failed[0]["service"] == service and "did not answer within 2 s" in failed[0]["error"]
    assert failed[0]["error"].startswith("NATS at nats://127.0.0.1:")
    assert "Traceback" not in text, text[-800:]


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_told_to_stop_while_waiting_for_nats_stops_at_once(service: str, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    proc = start(service, log, connect_timeout_s=300)
    try:
        await wait_for(lambda: any(e["event"] == "nats.error" for e in events(log)), timeout_s=60,
                 what="the service to be trying NATS")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)            # not the 300 s of its connect timeout
    finally:
        proc.kill()
    text = log.read_text()
    assert code == 0, text[-800:]
    stopped = [e for e in events(log) if e["event"] == "service.stopped"]
    assert stopped and stopped[0]["during"] == "start-up" and stopped[0]["signal"] == "SIGTERM", text[-800:]
    assert not any(e["event"] == "service.start_failed" for e in events(log))
    assert "Traceback" not in text, text[-800:]


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_gateway_with_one_worker_is_one_process_and_with_more_a_main_and_its_workers(
        workers: int, tmp_path: Path) -> None:
    """One worker needs no main to share connections out: the started process builds and serves the app itself
    (tens of megabytes fewer); more are forked by a main that builds nothing."""
    log = tmp_path / "service.log"
    proc = start("gateway", log, connect_timeout_s=300, workers=workers)
    try:
        await wait_for(lambda: sum(e["event"] == "nats.error" for e in events(log)) >= workers, timeout_s=60,
                       what="every worker to be trying NATS")
        children = psutil.Process(proc.pid).children()
        assert len(children) == (0 if workers == 1 else workers), children
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
    assert code == 0, log.read_text()[-800:]
