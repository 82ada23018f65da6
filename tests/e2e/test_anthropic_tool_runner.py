"""End to end: the `anthropic` SDK's tool runner, which asks for server-kept message threads, through the Anthropic door.

The runner (`client.beta.messages.tool_runner`) sends its first turn with `thread: {"type": "create"}` and each later
one with only the new messages and `thread: {"type": "continue", ...}`. The gateway keeps no conversation: a request
naming a thread is refused as Anthropic refuses one it cannot thread (`error.details.error_code`
`thread_unsupported_request`), and the runner then sends every turn whole, without a thread.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest
from anthropic import beta_async_tool

from tests.conftest import DUPLICATE_GRACE_S, DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import PATHS, Upstream, registered_upstream
from tests.e2e.test_demo import usage_rows


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"anth-runner-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


@beta_async_tool
async def get_weather(city: str) -> str:
    """The current weather in a city.

    Args:
        city: the city's name
    """
    return f"-3 degrees and snow in {city}"


@pytest.mark.parametrize("served", ["native", "translated"])
async def test_the_tool_runner_calls_its_tool_and_answers_each_turn_sent_whole(demo: DemoStack, upstream: Upstream,
                                                                                served: str) -> None:
    """Its second turn was a 400 (`messages.0.content.0: tool_result answers no tool_use`): only the tool's result
    was sent, the rest left to a thread the gateway does not keep."""
    before, request_id = upstream.calls(PATHS[served]), f"runner-{uuid.uuid4().hex}"
    runner = upstream.client().beta.messages.tool_runner(
        model=upstream.model(served), max_tokens=50, tools=[get_weather],
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        extra_headers={"X-Request-Id": request_id})          # every turn's: the calls are counted by it
    replies = [message async for message in runner]
    assert [reply.stop_reason for reply in replies] == ["tool_use", "end_turn"], replies
    [call] = [block for block in replies[0].content if block.type == "tool_use"]
    assert call.name == "get_weather" and set(call.input) == {"city"}
    assert replies[-1].content[0].type == "text" and replies[-1].content[0].text
    assert upstream.calls(PATHS[served]) - before == 2        # the refused threaded turn never reached it

    async def both() -> list:
        rows = await usage_rows(demo, request_id)
        return rows if len(rows) >= 2 else []

    rows = await wait_for(both, timeout_s=15, what="two usage events")
    await asyncio.sleep(DUPLICATE_GRACE_S)
    rows = [json.loads(row["payload"]) for row in await usage_rows(demo, request_id)]
    assert [(row["api"], row["outcome"]) for row in rows] == [("anthropic.messages", "ok")] * 2, rows


async def test_a_request_naming_a_thread_is_refused_saying_threads_are_not_kept(upstream: Upstream) -> None:
    body = {"model": upstream.model("translated"), "max_tokens": 5, "thread": {"type": "create"},
            "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        for thread in ({"type": "create"}, {"type": "continue", "previous_message_id": "msg_1"}):
            reply = await client.post(f"{upstream.demo.url}/v1/messages", json={**body, "thread": thread},
                                      headers={"x-api-key": upstream.key, "anthropic-version": "2023-06-01"})
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error" and "thread" in error["message"]
            assert error["details"] == {"error_code": "thread_unsupported_request", "unsupported": ["thread"]}
    with pytest.raises(anthropic.BadRequestError):           # a thread asked for by name is refused, not dropped
        await upstream.client().beta.messages.create(**body)
