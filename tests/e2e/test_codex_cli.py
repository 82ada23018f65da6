"""End to end: OpenAI's Codex CLI (`codex exec`) against the gateway's Responses door, configured as its users
configure it for a gateway: a custom model provider whose `base_url` is the gateway's `/v1`.

Skipped when the `codex` binary is absent (`npm install -g @openai/codex`): CI does not install it. Its upstream is a
simulator answering with a call to the first tool offered, then in text once the call's output comes back, so one
`codex exec` is a tool round trip of two model calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from switchyard_gateway.simulator.config import SimConfig
from switchyard_gateway.simulator.server import Simulator
from tests.clients import run_client
from tests.conftest import DUPLICATE_GRACE_S, DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import _admin, add_tenant

CODEX = shutil.which("codex")
pytestmark = pytest.mark.skipif(CODEX is None, reason="the codex CLI is not installed (npm install -g @openai/codex)")

CHAT = "/v1/chat/completions"
# web_search: Codex offers OpenAI's hosted search unless told not to, and the door refuses hosted tools by name
CONFIG = """model = "{model}"
model_provider = "switchyard"
web_search = "disabled"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.switchyard]
name = "Switchyard"
base_url = "{url}/v1"
env_key = "SWITCHYARD_KEY"
wire_api = "responses"
"""


@asynccontextmanager
async def codex_upstream(demo: DemoStack, prefix: str) -> AsyncIterator[tuple[Simulator, str]]:
    """A simulated OpenAI-compatible model `<prefix>-model` with room for Codex's prompt (some 6,000 tokens), and a
    tenant named `prefix` with a key for it; removed afterwards."""
    model = f"{prefix}-model"
    async with Simulator(SimConfig(models=(model,), call_tools=True)) as sim, \
            httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        await _admin(admin, "POST", "providers", {"provider_id": f"{prefix}-kind", "kind": "openai-compatible"})
        await _admin(admin, "POST", "models", {"model_id": model, "kind": "chat", "context_length": 32768})
        await _admin(admin, "POST", "endpoints", {"endpoint_id": f"{prefix}-vllm", "provider_id": f"{prefix}-kind",
                                                  "base_url": sim.url, "models": [model], "timeout_s": 10.0})
        key = await add_tenant(demo, prefix, [model])
        try:
            yield sim, key
        finally:
            for path in (f"tenants/{prefix}", f"endpoints/{prefix}-vllm", f"models/{model}",
                         f"providers/{prefix}-kind"):
                await admin.delete(f"/api/admin/{path}")


async def tenant_usage(demo: DemoStack, tenant: str) -> list[dict]:
    conn = await asyncpg.connect(demo.database_url)
    try:
        rows = await conn.fetch("SELECT payload::text AS payload FROM events WHERE type = 'usage.recorded.v2'"
                                " AND payload->>'tenant_id' = $1", tenant)
    finally:
        await conn.close()
    return [json.loads(row["payload"]) for row in rows]


async def test_codex_exec_makes_a_tool_round_trip_with_one_usage_event_per_model_call(demo: DemoStack,
                                                                                      tmp_path: Path) -> None:
    prefix = f"codex-{uuid.uuid4().hex[:6]}"
    async with codex_upstream(demo, prefix) as (sim, key):
        home = tmp_path / "codex"
        home.mkdir()
        (home / "config.toml").write_text(CONFIG.format(model=f"{prefix}-model", url=demo.url))
        work = tmp_path / "work"
        work.mkdir()
        env = {**os.environ, "CODEX_HOME": str(home), "SWITCHYARD_KEY": key}
        code, out, err = await run_client(CODEX, "exec", "--skip-git-repo-check", "List the files here with the shell.",
                                          cwd=work, env=env)
        assert code == 0, err.decode(errors="replace")[-2000:]
        assert out.strip(), "codex wrote no final answer"
        calls = sim.stats.requests.get(CHAT, 0)
        assert calls >= 2, err.decode(errors="replace")[-2000:]          # the call, then the answer to its output
        events = await wait_for(lambda: _counted(demo, prefix, calls), timeout_s=15, interval_s=0.1,
                                what=f"{calls} usage events")
        deadline = time.monotonic() + DUPLICATE_GRACE_S     # a duplicate would come with the next metering batch
        while time.monotonic() < deadline:
            events = await tenant_usage(demo, prefix)
            assert len(events) == calls, events
            await asyncio.sleep(0.1)
    assert {(e["api"], e["outcome"], e["status"], e["stream"]) for e in events} == {
        ("openai.responses", "ok", 200, True)}
    assert all(e["input_tokens"] > 1000 and e["output_tokens"] > 0 for e in events)


async def _counted(demo: DemoStack, tenant: str, calls: int) -> list[dict] | None:
    events = await tenant_usage(demo, tenant)
    return events if len(events) >= calls else None
