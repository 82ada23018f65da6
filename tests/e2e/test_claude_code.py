"""End to end: Anthropic's Claude Code CLI (`claude -p`) pointed at the gateway's Anthropic door, a tool round trip
through an Ollama endpoint and an OpenAI-compatible one, each model call recorded once.

The simulator behind the door calls the first tool it is offered (Claude Code's `Read`, with arguments it makes up:
the tool fails) and answers in text once it has the tool's result, so a run is two model calls. The file the prompt
names with `@` reaches the door as a `system` turn among the messages, as Claude Code sends what it read itself.
Skipped, saying why, where the `claude` command is not installed (CI does not install it).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.clients import run_client
from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import PATHS, Upstream, registered_upstream
from tests.e2e.test_demo import exactly_one_usage_row

CLAUDE = shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="the claude command (Claude Code) is not installed: "
                                                      "npm install -g @anthropic-ai/claude-code")


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"cc-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


async def claude(upstream: Upstream, model: str, home: Path, prompt: str) -> list[dict]:
    """`claude -p PROMPT` offered the Read tool alone, its events (stream-json) as it printed them."""
    assert CLAUDE is not None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "ANTHROPIC_BASE_URL": upstream.demo.url,
           "ANTHROPIC_API_KEY": upstream.key, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
           "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
           # its default (32,000) is above the test models' 4,096-token context: the door refuses it, as Anthropic
           # refuses a `max_tokens` above a model's maximum
           "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "512"}
    code, out, err = await run_client(CLAUDE, "-p", prompt, "--model", model, "--tools", "Read", "--output-format",
                                      "stream-json", "--verbose", cwd=home, env=env)
    events = [json.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert code == 0, (code, events[-1].get("result") if events else out[-2000:], err[-2000:])
    return events


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_claude_code_completes_a_tool_round_trip_and_each_call_is_recorded_once(
        demo: DemoStack, upstream: Upstream, served: str, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("The 7:40 to Oslo leaves from track 3.\n")
    before = upstream.calls(PATHS[served])
    # a file named with @ is read by Claude Code itself and given as a system turn after the user's
    events = await claude(upstream, upstream.model(served), tmp_path, "Which track does @notes.txt name?")
    result = events[-1]
    assert (result["type"], result["is_error"], result["num_turns"]) == ("result", False, 2), result
    answers = [e["message"] for e in events if e["type"] == "assistant"]
    assert [block["type"] for answer in answers for block in answer["content"]] == ["tool_use", "text"]
    assert answers[0]["content"][0]["name"] == "Read"
    # the gateway's request id (Claude Code shows the `request-id` header beside each answer) names its usage event
    request_ids = [e["request_id"] for e in events if e["type"] == "assistant"]
    assert len(set(request_ids)) == 2 and upstream.calls(PATHS[served]) == before + 2
    for rid in request_ids:
        event = await exactly_one_usage_row(demo, rid)
        assert (event["api"], event["outcome"], event["stream"], event["model"]) == (
            "anthropic.messages", "ok", True, upstream.model(served))
