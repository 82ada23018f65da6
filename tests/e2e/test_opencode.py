"""End to end: the opencode coding agent (`opencode run`) pointed at the gateway as its users configure a custom
provider, through the Chat Completions door (`@ai-sdk/openai-compatible`) and the Anthropic door (`@ai-sdk/anthropic`),
a tool round trip through an Ollama endpoint and an OpenAI-compatible one, each model call recorded once.

The simulator behind the doors calls the first tool opencode offers (`bash`, with arguments it makes up: the tool
fails) and answers in text once it has the tool's result, so a run is two model calls with tools, and a third
without them when opencode asks its small model for the session's title. Skipped, saying how to get it, where the
`opencode` command is not installed (CI does not install it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.clients import run_client
from tests.conftest import DUPLICATE_GRACE_S, DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import PATHS, Upstream, registered_upstream
from tests.e2e.test_codex_cli import tenant_usage

OPENCODE = shutil.which("opencode")
pytestmark = pytest.mark.skipif(OPENCODE is None, reason="the opencode command is not installed: "
                                                        "npm install -g opencode-ai")

# opencode asks for 32,000 tokens unless told the model's output limit; a context below its own prompt (some 9,000
# tokens) has it compact the session after every answer and go on, so this one is larger than the simulator's prompt
LIMITS = {"context": 65536, "output": 512}
DOORS = {"chat": ("@ai-sdk/openai-compatible", "/v1", "openai.chat"),
         "messages": ("@ai-sdk/anthropic", "/v1", "anthropic.messages")}


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"oc-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


def config(upstream: Upstream, door: str, model: str) -> dict:
    """An opencode.json with one provider, the gateway, serving `model` through `door`."""
    package, path, _ = DOORS[door]
    return {"$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
            "model": f"switchyard/{model}", "small_model": f"switchyard/{model}",
            "provider": {"switchyard": {
                "npm": package, "name": "Switchyard",
                "options": {"baseURL": f"{upstream.demo.url}{path}", "apiKey": "{env:SWITCHYARD_KEY}"},
                "models": {model: {"name": model, "tool_call": True, "limit": LIMITS}}}}}


async def opencode(upstream: Upstream, door: str, model: str, home: Path, prompt: str) -> list[dict]:
    """`opencode run PROMPT` in an empty project under `home`, its events (`--format json`) as it printed them."""
    assert OPENCODE is not None
    project = home / "project"
    project.mkdir()
    (project / "opencode.json").write_text(json.dumps(config(upstream, door, model)))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache"),
           "XDG_STATE_HOME": str(home / ".local/state"), "SWITCHYARD_KEY": upstream.key,
           "OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_SHARE": "1",
           "OPENCODE_DISABLE_CLAUDE_CODE": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1"}
    code, out, err = await run_client(OPENCODE, "run", "--format", "json", prompt, cwd=project, env=env, timeout_s=90)
    events = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert code == 0, (code, events[-3:], err[-2000:])
    return events


def chat_calls(upstream: Upstream) -> int:
    """Chat calls the simulator answered, either way: the Chat Completions door asks an Ollama endpoint at its own
    `/v1/chat/completions`, the Anthropic door at `/api/chat`."""
    return sum(upstream.calls(path) for path in set(PATHS.values()))


@pytest.mark.parametrize("served", ["native", "translated"])
@pytest.mark.parametrize("door", ["chat", "messages"])
async def test_opencode_completes_a_tool_round_trip_and_each_call_is_recorded_once(
        demo: DemoStack, upstream: Upstream, door: str, served: str, tmp_path: Path) -> None:
    model = upstream.model(served)
    before = {e["request_id"] for e in await tenant_usage(demo, upstream.prefix)}
    calls_before = chat_calls(upstream)
    events = await opencode(upstream, door, model, tmp_path, "Which track does notes.txt name?")
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, [e for e in events if e["type"] == "error"]
    tool = next(e["part"] for e in events if e["type"] == "tool_use")
    assert tool["tool"] == "bash" and tool["state"]["status"] in ("completed", "error")   # it ran the call it got
    assert kinds.index("tool_use") < kinds.index("text")             # and answered in text after the tool's result
    finishes = [e["part"]["reason"] for e in events if e["type"] == "step_finish"]
    assert finishes == ["tool-calls", "stop"], finishes
    calls = chat_calls(upstream) - calls_before
    assert calls >= 2                                               # the round trip; a title call may come too

    async def recorded() -> list[dict] | None:
        new = [e for e in await tenant_usage(demo, upstream.prefix) if e["request_id"] not in before]
        return new if len(new) >= calls else None

    new = await wait_for(recorded, timeout_s=15, interval_s=0.1, what=f"{calls} usage events")
    deadline = time.monotonic() + DUPLICATE_GRACE_S                 # a duplicate would come with the next batch
    while time.monotonic() < deadline:
        new = [e for e in await tenant_usage(demo, upstream.prefix) if e["request_id"] not in before]
        assert len(new) == calls, new
        await asyncio.sleep(0.1)
    assert {(e["api"], e["outcome"], e["status"], e["stream"], e["model"]) for e in new} == {
        (DOORS[door][2], "ok", 200, True, model)}
