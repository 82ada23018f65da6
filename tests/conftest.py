"""Shared fixtures: one real NATS/PostgreSQL/Valkey stack per session, from the launcher `switchyard up` uses.

Isolation: each test that needs the log gets a fresh database; stream-level tests
use their own stream names; the end-to-end demo stack owns the production streams.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from switchyard_gateway.kit.settings import with_database
from switchyard_gateway.kit.stack import EmbeddedStack, StackUrls
from switchyard_gateway.kit.stack_proc import pick_free_port

REPO = Path(__file__).resolve().parent.parent


def traversable_tempdir(prefix: str) -> Path:
    """A temp dir every user can traverse: PostgreSQL may run as another user than the tests."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    root = traversable_tempdir("switchyard-tests-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(stack_root: Path) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(stack_root / "stack", durable=False) as running:
        yield running


@pytest.fixture(scope="session")
def urls(stack: EmbeddedStack) -> StackUrls:
    return stack.urls


# How long a test looks for a second usage event of a call after the first came: a duplicate published with the
# first would come in the same metering batch or the next one, each written at most `ingest_linger_s` (0.25 s) after
# its first message.
DUPLICATE_GRACE_S = 0.6


async def wait_for(condition, timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "condition"):
    """Poll an (async or plain) condition until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def logged(database_url: str, type_: str, condition: str = "true", *args: object) -> list[dict]:
    """The payloads of the log's events of one type that meet an SQL condition on `payload` ($2, $3... are
    `args`), in log order."""
    import json

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f"SELECT payload::text AS p FROM events WHERE type = $1 AND ({condition}) "
                                "ORDER BY position", type_, *args)
    finally:
        await conn.close()
    return [json.loads(r["p"]) for r in rows]


@pytest.fixture(scope="module")
def own_nats(urls: StackUrls, stack_root: Path) -> Iterator[str]:
    """A NATS server (JetStream) of the test module's own, for tests that run metering's log feed and replay on the
    production subjects and streams apart from the session's demo stack; PostgreSQL and Valkey are the session's."""
    with EmbeddedStack(stack_root / f"nats-{uuid.uuid4().hex[:8]}", database_url=urls.database_url,
                       redis_url=urls.redis_url, durable=False) as running:
        yield running.urls.nats_url


@pytest.fixture
async def database_url(urls: StackUrls) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return await create_database(urls.database_url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from switchyard_gateway.kit import eventlog

    pool = await eventlog.create_pool(database_url, timeout_s=10)
    async with pool.acquire() as conn:
        await eventlog.migrate(conn)
    yield pool
    await pool.close()


@pytest.fixture
async def nc(urls: StackUrls):
    from switchyard_gateway.kit import natsio

    client = await natsio.connect(urls.nats_url, "tests", 10)
    yield client
    await client.close()


def run_sync(coro):
    """Run a coroutine to completion from sync code, on a thread of its own (never inside the test loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class DemoStack:
    """`switchyard up --demo` run as a subprocess against the session's infrastructure."""

    def __init__(self, proc: subprocess.Popen[bytes], data_dir: Path, port: int, database_url: str) -> None:
        self.proc, self.data_dir, self.port, self.database_url = proc, data_dir, port, database_url
        keys = dict(line.split("=", 1) for line in (data_dir / "keys.env").read_text().split())
        self.admin_key = os.environ.get("SWITCHYARD_ADMIN_KEY") or keys["SWITCHYARD_ADMIN_KEY"]
        self.demo_key = os.environ.get("SWITCHYARD_DEMO_KEY") or keys["SWITCHYARD_DEMO_KEY"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return (self.data_dir / "up.log").read_text()

    def endpoint_url(self, endpoint_id: str) -> str:
        config = httpx.get(f"{self.url}/api/config", headers={"Authorization": f"Bearer {self.admin_key}"}).json()
        return next(e["url"] for e in config["endpoints"] if e["id"] == endpoint_id)


@pytest.fixture(scope="session")
def demo(urls: StackUrls, stack_root: Path) -> Iterator[DemoStack]:
    """The whole system, started by the same `up` command users run, sharing the session's NATS/PG/Valkey."""
    data_dir = stack_root / "demo"
    data_dir.mkdir()
    database_url = run_sync(create_database(urls.database_url, "demo"))
    port = pick_free_port(set())
    env = {
        **os.environ, "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_DATABASE_URL": database_url,
        "SWITCHYARD_REDIS_URL": urls.redis_url, "SWITCHYARD_LOG_LEVEL": "info",
    }
    # Two gateway workers whatever the machine: every end-to-end test meets the multi-worker gateway.
    proc = start_up(["--demo", "--data-dir", str(data_dir), "--port", str(port), "--gateway-workers", "2"], env,
                    data_dir / "up.log")
    try:
        yield DemoStack(proc, data_dir, port, database_url)
    finally:
        stop_up(proc)


def start_up(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`switchyard up ARGS` as a subprocess writing to log_path, once it says it is up (90 s at most)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.cli", "up", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + 90
    while b"Switchyard is up" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"switchyard up {' '.join(args)} did not start:\n" + log_path.read_text())
        time.sleep(0.2)
    return proc


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator stops it; SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
