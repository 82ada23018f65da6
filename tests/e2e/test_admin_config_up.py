"""`switchyard up --config switchyard.yaml`: the registry bootstrapped from a file, idempotently; a credential
given as ${VAR} is used upstream and never shows in events, logs or admin responses.

This `up` gets a NATS of its own and a fresh database on the session's PostgreSQL, so the shared demo
stack is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiohttp import web

from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_nats import NatsServer
from switchyard_gateway.kit.stack_proc import Spawner, pick_free_port
from tests.conftest import REPO, create_database, traversable_tempdir, wait_for

SECRET = f"sk-e2e-{uuid.uuid4().hex}"
CONFIG = """
providers:
  - {{id: cloud, kind: openai, display_name: Upstream that echoes keys}}
endpoints:
  - {{id: cloud-1, provider: cloud, base_url: "http://127.0.0.1:{port}/v1", api_key: "${{SY_E2E_UPSTREAM_KEY}}",
     models: [gpt-e2e], max_concurrent: 2}}
models:
  - {{id: gpt-e2e, input_price_per_1m: 1.0, output_price_per_1m: 2.0}}
tenants:
  - id: yaml-tenant
    all_models: false
    models: [{{model: gpt-e2e, default: true, priority: 3}}]
"""


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[int, list[str]]]:
    """An OpenAI-like upstream that refuses every key and, as OpenAI does, repeats it in the error."""
    presented: list[str] = []

    async def models(request: web.Request) -> web.Response:
        presented.append(request.headers.get("Authorization", ""))
        key = presented[-1].removeprefix("Bearer ")
        return web.json_response({"error": {"message": f"Incorrect API key provided: {key}"}}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], presented  # noqa: SLF001 — the bound port
    await runner.cleanup()


@pytest.fixture
async def private_urls(urls: StackUrls) -> AsyncIterator[StackUrls]:
    async with private_stack(urls, "cfg") as private:
        yield private


@contextlib.asynccontextmanager
async def private_stack(urls: StackUrls, name: str) -> AsyncIterator[StackUrls]:
    """A NATS of its own and a fresh database beside the session's Valkey: a registry that starts empty."""
    root = traversable_tempdir(f"switchyard-{name}-nats-")
    first = pick_free_port(set())
    server = NatsServer(root, root, {"nats": first, "nats_monitor": pick_free_port({first})}, durable=False)
    spawner = Spawner()
    server.spawn(spawner)
    await asyncio.to_thread(server.wait_ready, timeout_s=20)
    database = await create_database(urls.database_url, f"{name}_{uuid.uuid4().hex[:10]}")
    try:
        yield StackUrls(nats_url=server.url, database_url=database, redis_url=urls.redis_url)
    finally:
        server.stop(timeout_s=5)
        spawner.close()
        shutil.rmtree(root, ignore_errors=True)


class Up:
    def __init__(self, data_dir: Path, config: Path, urls: StackUrls) -> None:
        self.data_dir, self.config, self.urls = data_dir, config, urls
        self.port = pick_free_port(set())
        self.admin_key = f"sy_cfgadmin_{uuid.uuid4().hex}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
        env.update(SWITCHYARD_NATS_URL=self.urls.nats_url, SWITCHYARD_DATABASE_URL=self.urls.database_url,
                   SWITCHYARD_REDIS_URL=self.urls.redis_url, SWITCHYARD_ADMIN_KEY=self.admin_key,
                   SY_E2E_UPSTREAM_KEY=SECRET)
        self.logs.append(self.data_dir.parent / f"up-{time.monotonic_ns()}.log")
        with open(self.logs[-1], "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(self.data_dir), "--port", str(self.port),
                 "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        await wait_for(self._answers, 90, interval_s=0.3, what="switchyard up --config")

    async def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.logs[-1].read_text()
        try:
            return (await self.get("/api/admin/tenants")).status_code == 200
        except httpx.HTTPError:
            return False

    async def get(self, path: str, method: str = "GET") -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(method, f"http://127.0.0.1:{self.port}{path}",
                                        headers={"X-API-Key": self.admin_key})

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(self.proc.wait, 60) == 0


async def event_log(database_url: str) -> tuple[int, str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT payload::text AS payload FROM events")
    finally:
        await conn.close()
    return len(rows), "".join(r["payload"] for r in rows)


async def routing_stream(nats_url: str) -> str:
    nc = await natsio.connect(nats_url, "test-reader", 10)
    try:
        sub = await nc.jetstream().subscribe(">", stream=subjects.STREAM_ROUTING, ordered_consumer=True)
        seen = []
        while True:
            try:
                seen.append((await sub.next_msg(timeout=1)).data.decode())
            except Exception:  # noqa: BLE001 — the stream ran dry
                return "".join(seen)
    finally:
        await nc.close()


async def test_yaml_bootstraps_the_registry_idempotently_and_the_secret_never_leaks(
        private_urls: StackUrls, upstream: tuple[int, list[str]]) -> None:
    port, presented = upstream
    root = traversable_tempdir("switchyard-cfg-")
    config = root / "switchyard.yaml"
    config.write_text(CONFIG.format(port=port))
    up = Up(root / "data", config, private_urls)

    await up.start()
    try:
        seen: list[str] = []
        endpoint = await up.get("/api/admin/endpoints/cloud-1")
        assert endpoint.json()["api_key_ref"] == "${SY_E2E_UPSTREAM_KEY}"
        assignment = (await up.get("/api/admin/tenants/yaml-tenant/models/gpt-e2e")).json()
        assert assignment["is_default"] is True and assignment["priority"] == 3
        tested = await up.get("/api/admin/endpoints/cloud-1/test", "POST")
        assert tested.json()["success"] is False and tested.json()["status"] == 401
        assert "Incorrect API key provided: ***" in tested.json()["error"]
        assert f"Bearer {SECRET}" in presented, "the credential was sent upstream"
        for path, method in (("/api/admin/endpoints", "GET"), ("/api/admin/registry/status", "GET"),
                             ("/api/admin/registry/export", "GET"), ("/api/admin/circuits", "GET"),
                             ("/api/admin/registry/refresh", "POST"), ("/api/config", "GET")):
            response = await up.get(path, method)
            assert response.status_code == 200, (path, response.text)
            seen.append(response.text)
        seen.append(tested.text)
        assert not [text for text in seen if SECRET in text]
        first_count, first_dump = await event_log(private_urls.database_url)
    finally:
        await up.stop()
    assert "registry document applied: 0 change(s)" not in up.logs[-1].read_text()

    await up.start()
    try:
        assert (await up.get("/api/admin/models/gpt-e2e")).status_code == 200
    finally:
        await up.stop()
    assert "registry document applied: 0 change(s)" in up.logs[-1].read_text()
    second_count, dump = await event_log(private_urls.database_url)
    assert second_count == first_count, "applying the same file again recorded nothing"

    routing = await routing_stream(private_urls.nats_url)
    assert "Incorrect API key provided: ***" in routing, "probe errors are published, redacted"
    logs = "".join(p.read_text(errors="replace") for p in [*up.logs, *(up.data_dir / "logs").glob("*.log")])
    assert "cloud-1" in logs
    for where, text in (("events", dump), ("ROUTING stream", routing), ("logs", logs)):
        assert SECRET not in text, where
    shutil.rmtree(root, ignore_errors=True)


def test_up_refuses_an_invalid_config_before_starting_anything(tmp_path: Path) -> None:
    config = tmp_path / "switchyard.yaml"
    config.write_text("providers: [{id: pp, kind: ollama}]\nendpoints: [{id: e1, provider: qq, base_url: 'ftp://h'}]\n")
    run = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "up", "--data-dir", str(tmp_path / "data"),
                          "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.returncode == 1
    assert "endpoints[0].provider" in run.stderr and "endpoints[0].base_url" in run.stderr
    assert "nothing started" in run.stderr and not (tmp_path / "data" / "stack.json").exists()
