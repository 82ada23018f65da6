"""`switchyard replay` and `switchyard events` against the database of a running `switchyard up --demo`:
after a mixed workload every rebuilt projection equals the live one, also when rebuilt while the system
serves, and the event log can be followed and exported as JSON lines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import httpx

from switchyard_gateway.contracts.codec import decode_event
from tests.conftest import REPO, DemoStack, wait_for

TABLES = ("token_counts", "tenant_token_counts", "usage_minutes", "usage_days", "usage_cost",
          "cost_models", "cost_overrides")
PROJECTIONS = ("token_counts", "usage_series", "usage_cost")


def cli(demo: DemoStack, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `switchyard ...` on the demo's stack: replay finds it by --data-dir, events by the database URL."""
    if args[0] == "replay":
        args = (*args, "--data-dir", str(demo.data_dir))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    else:
        env = {**os.environ, "SWITCHYARD_DATABASE_URL": demo.database_url}
    return subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)


async def snapshot(demo: DemoStack) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(demo.database_url)
    try:
        return {t: sorted((tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")), key=repr) for t in TABLES}
    finally:
        await conn.close()


async def usage_count(demo: DemoStack) -> int:
    conn = await asyncpg.connect(demo.database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM events WHERE type = 'usage.recorded.v2'")
    finally:
        await conn.close()


async def caught_up(demo: DemoStack, usage_events: int) -> bool:
    """The log holds `usage_events` usage events and every metering projection has folded the whole log."""
    conn = await asyncpg.connect(demo.database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'usage.recorded.v2'")
        head = await conn.fetchval("SELECT max(position) FROM events")
        positions = await conn.fetch("SELECT position FROM projection_checkpoints WHERE projection = ANY($1)",
                                     list(PROJECTIONS))
    finally:
        await conn.close()
    return count == usage_events and len(positions) == len(PROJECTIONS) and all(r["position"] == head
                                                                                for r in positions)


async def quiet(demo: DemoStack, usage_events: int) -> dict[str, list[tuple]]:
    """The projections once every call made so far is in the log and folded."""
    await wait_for(lambda: caught_up(demo, usage_events), timeout_s=15, what="metering caught up")
    return await snapshot(demo)


async def mixed_workload(demo: DemoStack, client: httpx.AsyncClient, calls: int) -> list[int]:
    headers = {"Authorization": f"Bearer {demo.demo_key}"}
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "replay me"}]}
    requests = []
    for i in range(calls):
        if i % 3 == 0:
            requests.append(client.post(f"{demo.url}/v1/embeddings", headers=headers,
                                        json={"model": "nomic-embed-text", "input": f"text {i}"}))
        else:
            requests.append(client.post(f"{demo.url}/v1/chat/completions", headers=headers,
                                        json={**chat, "stream": i % 3 == 2}))
    return [r.status_code for r in await asyncio.gather(*requests)]


async def test_every_rebuilt_projection_equals_the_live_one_even_while_serving(demo: DemoStack) -> None:
    admin = {"X-API-Key": demo.admin_key}
    before = await usage_count(demo)
    async with httpx.AsyncClient(timeout=20) as client:
        assert set(await mixed_workload(demo, client, 30)) == {200}
        # a price change half-way: later calls cost more, and a replay must price them the same way
        model = (await client.get(f"{demo.url}/api/admin/models/llama3.2", headers=admin)).json()
        changed = {k: v for k, v in model.items() if k not in ("updated_at",)}
        changed["output_price_per_1m"] = model.get("output_price_per_1m", 0) + 0.5
        assert (await client.put(f"{demo.url}/api/admin/models/llama3.2", headers=admin, json=changed)).status_code \
            == 200
        assert set(await mixed_workload(demo, client, 30)) == {200}
        live = await quiet(demo, before + 60)

        replayed = cli(demo, "replay", "--all")
        assert replayed.returncode == 0, replayed.stderr
        assert "events/s" in replayed.stdout and "100.0%" in replayed.stderr       # report and progress bar
        assert await snapshot(demo) == live

        serving = asyncio.ensure_future(mixed_workload(demo, client, 60))
        replayed = await asyncio.to_thread(cli, demo, "replay", "--all")
        statuses = await serving
        assert replayed.returncode == 0, replayed.stderr
    assert set(statuses) == {200}                       # the system kept serving during the rebuild
    after = await quiet(demo, before + 120)
    assert sum(r[4] for r in after["token_counts"]) == sum(r[4] for r in live["token_counts"]) + 60
    assert cli(demo, "replay", "--all").returncode == 0
    assert await snapshot(demo) == after


async def test_events_export_writes_decodable_lines_and_tail_follows_new_events(demo: DemoStack) -> None:
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=10) as client:          # at least one past event for `-n 1` to show
        await client.post(f"{demo.url}/v1/embeddings", json={"model": "nomic-embed-text", "input": "before"},
                          headers={"Authorization": f"Bearer {demo.demo_key}"})
    await wait_for(lambda: usage_count(demo), what="a usage event in the log")
    tail = subprocess.Popen([sys.executable, "-m", "switchyard_gateway.cli", "events", "tail", "--type", "usage",
                             "--tenant", "demo", "-n", "1"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "SWITCHYARD_DATABASE_URL": demo.database_url})
    read_line = lambda: asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), 15)  # type: ignore[union-attr]  # noqa: E731
    try:
        assert '"tenant_id":"demo"' in await read_line()       # the last past event: it is following now
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(f"{demo.url}/v1/embeddings", json={"model": "nomic-embed-text", "input": "x"},
                                      headers={"Authorization": f"Bearer {demo.demo_key}", "X-Request-Id": request_id})
        assert reply.status_code == 200
        line = await read_line()
    finally:
        tail.terminate()
        tail.wait(10)
    assert f'"request_id":"{request_id}"' in line and line.startswith('{"position":')

    exported = cli(demo, "events", "export", "--since", "1h", "--type", "usage")
    assert exported.returncode == 0, exported.stderr
    events = [decode_event(line) for line in exported.stdout.splitlines()]
    assert events and {e.tenant for e in events} >= {"demo"}
    assert request_id in {e.request_id for e in events}          # type: ignore[attr-defined]
    conn = await asyncpg.connect(demo.database_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'usage.recorded.v2'"
                                     " AND occurred_at >= now() - interval '1 hour'")
    finally:
        await conn.close()
    assert len(events) == stored
    assert cli(demo, "events", "export", "--since", "yesterday-ish").returncode != 0     # a clear refusal
    for wildcard in ("%", "usage_recorded", "u%"):        # a type's prefix is matched as written, not as a pattern
        matched = cli(demo, "events", "export", "--since", "1h", "--type", wildcard)
        assert matched.returncode == 0 and matched.stdout == "", (wildcard, matched.stdout[:200])
