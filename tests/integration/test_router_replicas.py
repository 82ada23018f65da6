"""Two router processes on one NATS: only the lease holder probes; when it stops, the other takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decode_events, encode
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.simulator import SimConfig, Simulator
from switchyard_gateway.services.router.lease import BUCKET, KEY
from tests.conftest import REPO, wait_for
from tests.integration.test_router_control import Plane, nats_url, plane  # noqa: F401 — fixtures



def start_router(name: str, nats: str, log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = pick_free_port(set())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(SWITCHYARD_NATS_URL=nats, SWITCHYARD_PORT=str(port), SWITCHYARD_INSTANCE=name,
               SWITCHYARD_LOG_JSON="true")
    log = open(log_dir / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.services.router"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)
    return proc, port


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def refresh(plane: Plane) -> list[str] | None:
    """Ask the leader for a probe round; the probers of its results, or None while nobody leads."""
    try:
        raw = await natsio.request(plane.nc, subjects.ROUTER_COMMAND, encode(m.RefreshProbes()), 10)
    except natsio.ServiceUnavailable:
        return None
    return [p.prober for p in msgspec.json.decode(raw, type=m.RefreshReply).probes]


async def test_two_router_processes_only_the_lease_holder_probes(plane: Plane, tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_probe(msg) -> None:
        seen.extend(e.prober for e in decode_events(msg.data))

    await plane.nc.subscribe(f"{subjects.PROBE_COMPLETED}.>", cb=on_probe)
    processes = []
    async with Simulator(SimConfig(models=("m1",))) as sim:
        await plane.endpoint(sim, "openai-compatible", ("m1",))
        await plane.endpoint(sim, "ollama", ("m1",))
        try:
            first, first_port = start_router("router-a", plane.url, tmp_path)
            processes.append(first)
            await wait_for(lambda: refresh(plane), 30, interval_s=0.2, what="router-a leads")
            second, second_port = start_router("router-b", plane.url, tmp_path)
            processes.append(second)
            await wait_for(lambda: answers(second_port), 30, interval_s=0.2, what="router-b up")
            for _ in range(3):
                assert await refresh(plane) == ["router-a", "router-a"]
            kv = await plane.nc.jetstream().key_value(BUCKET)
            assert (await kv.get(KEY)).value == b"router-a"
            assert set(seen) == {"router-a"}, "the follower never probed"

            first.send_signal(signal.SIGTERM)
            assert first.wait(30) == 0
            before = len(seen)
            probers = await wait_for(lambda: refresh(plane), 15, interval_s=0.2, what="router-b takes over")
            assert probers == ["router-b", "router-b"]
            assert (await kv.get(KEY)).value == b"router-b"
            assert set(seen[before:]) == {"router-b"}
            assert seen == sorted(seen), "every router-a probe came before every router-b probe"
        finally:
            for process in processes:
                if process.poll() is None:
                    process.terminate()
                    process.wait(30)
