"""End to end: the JavaScript clients people point at the gateway (the AI SDK with its OpenAI, OpenAI-compatible and
Anthropic providers, the `openai`, `@anthropic-ai/sdk` and `ollama` packages), each as its documentation shows, through
every door: tool round trips whole and streamed, usage counted, embeddings, and the AI SDK's default Responses
model referring to its earlier answers by `item_reference`, which the Responses door resolves to the items it kept.

Skipped unless `node` is on PATH and SWITCHYARD_JS_CLIENTS names a directory whose `node_modules` holds `ai`,
`@ai-sdk/openai`, `@ai-sdk/openai-compatible`, `@ai-sdk/anthropic`, `openai`, `@anthropic-ai/sdk`, `ollama` and `zod`
(`npm install` them there): CI installs none of them. The scenarios are tests/e2e/js_clients.mjs, run once (about a
second) against a simulator that calls the first tool offered, then answers in text once the tool's output comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.clients import run_client
from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import registered_upstream

PACKAGES = ("ai", "@ai-sdk/openai", "@ai-sdk/openai-compatible", "@ai-sdk/anthropic", "openai", "@anthropic-ai/sdk",
            "ollama", "zod")
NODE = shutil.which("node")
MODULES = Path(os.environ.get("SWITCHYARD_JS_CLIENTS", "/nonexistent")) / "node_modules"
MISSING = [name for name in PACKAGES if not (MODULES / name / "package.json").is_file()]
SCRIPT = Path(__file__).with_name("js_clients.mjs")

pytestmark = pytest.mark.skipif(
    NODE is None or bool(MISSING),
    reason="node is not on PATH" if NODE is None else
    f"SWITCHYARD_JS_CLIENTS names no node_modules with {', '.join(MISSING)} (npm install {' '.join(PACKAGES)})")


@pytest.fixture(scope="module")
async def scenarios(demo: DemoStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every scenario's line, by name: the script run beside a link to the packages (ES modules resolve from the
    script's own directory, not from NODE_PATH)."""
    run_dir = tmp_path_factory.mktemp("js-clients")
    shutil.copy(SCRIPT, run_dir / SCRIPT.name)
    (run_dir / "node_modules").symlink_to(MODULES.resolve(), target_is_directory=True)
    async with registered_upstream(demo, f"js-{uuid.uuid4().hex[:6]}") as upstream:
        code, out, err = await run_client(NODE, str(run_dir / SCRIPT.name), demo.url, upstream.key,
                                          f"{upstream.prefix}-translated", f"{upstream.prefix}-native", demo.demo_key,
                                          "nomic-embed-text")
    assert code == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    return {line["name"]: line for line in lines}


def test_every_client_scenario_works_through_its_door(scenarios: dict[str, dict]) -> None:
    assert len(scenarios) == 30, sorted(scenarios)
    failed = {name: line["detail"] for name, line in scenarios.items() if not line["ok"]}
    assert not failed, failed


def test_the_ai_sdks_default_responses_model_refers_to_its_earlier_answers_and_is_served(
        scenarios: dict[str, dict]) -> None:
    """Its second turn (and a tool loop's second step) names the first answer's items by id (`item_reference`): the
    gateway kept them, so the turn is served, whole and streamed."""
    for name in ("openai responses second turn with its default store",
                 "openai responses second turn with its default store streamed"):
        line = scenarios[name]
        assert line["ok"] and line["detail"]["referred"] >= 1, line
    assert all(line["ok"] for name, line in scenarios.items() if name.startswith("openai responses kept")), scenarios
