"""End to end: the OpenAI Agents SDK (`openai-agents`), over the Responses API (its default) and over chat
completions (how it is pointed at most other servers), runs a tool-using agent through the gateway unchanged —
whole and streamed, a function tool called with the arguments the model wrote and its result sent back — and every
model call the agent makes is one usage event with the tokens the SDK was told.

The simulator (tests/e2e/test_anthropic_front_door.py's `registered_upstream`) answers a chat offering tools with a
call to one, and the chat carrying the tool's result with text.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_anthropic_front_door import Upstream, registered_upstream
from tests.e2e.test_demo import exactly_one_usage_row

agents = pytest.importorskip("agents", reason="the OpenAI Agents SDK (`openai-agents`, a test extra) is not installed")


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, f"agents-{uuid.uuid4().hex[:6]}") as registered:
        yield registered


class Labelled:
    """An HTTP client for the SDK that gives each request its own `X-Request-Id` and keeps them, so each model call
    the agent makes can be found in the log."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.http = httpx.AsyncClient(timeout=30, event_hooks={"request": [self._label]})

    async def _label(self, request: httpx.Request) -> None:
        request.headers["X-Request-Id"] = rid = uuid.uuid4().hex
        self.ids.append(rid)


MODELS = {"openai.responses": "OpenAIResponsesModel", "openai.chat": "OpenAIChatCompletionsModel"}


def agent_of(demo: DemoStack, upstream: Upstream, api: str, http: httpx.AsyncClient, cities: list[str]):
    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return f"-3 degrees and snow in {city}"

    client = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=upstream.key, max_retries=0, http_client=http)
    return agents.Agent(name="forecaster", instructions="Answer briefly.", tools=[get_weather],
                        model=getattr(agents, MODELS[api])(model=upstream.model("translated"), openai_client=client),
                        # a chat stream tells its usage when asked (`stream_options.include_usage`)
                        model_settings=agents.ModelSettings(max_tokens=60, include_usage=True))


async def _recorded(demo: DemoStack, api: str, labelled: Labelled, result) -> None:
    """One usage event per model call, each with the counts the SDK was answered."""
    answered = [(r.usage.input_tokens, r.usage.output_tokens) for r in result.raw_responses]
    assert len(labelled.ids) == len(answered) == 2                      # the tool call, then the answer
    recorded = [await exactly_one_usage_row(demo, rid) for rid in labelled.ids]
    assert [(e["api"], e["outcome"]) for e in recorded] == [(api, "ok")] * 2
    assert [(e["input_tokens"], e["output_tokens"]) for e in recorded] == answered


@pytest.mark.parametrize("api", MODELS)
async def test_an_agent_calls_its_tool_and_answers_through_the_gateway(demo: DemoStack, upstream: Upstream,
                                                                       api: str) -> None:
    agents.set_tracing_disabled(True)                   # the SDK's traces would go to OpenAI's servers
    labelled, cities = Labelled(), []
    result = await agents.Runner.run(agent_of(demo, upstream, api, labelled.http, cities), "Weather in Oslo?")
    kinds = [type(item).__name__ for item in result.new_items]
    assert kinds == ["ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"]
    assert len(cities) == 1 and cities[0] and isinstance(result.final_output, str) and result.final_output
    assert result.context_wrapper.usage.requests == 2
    await _recorded(demo, api, labelled, result)


@pytest.mark.parametrize("api", MODELS)
async def test_a_streamed_agent_run_sees_the_tool_call_and_the_text(demo: DemoStack, upstream: Upstream,
                                                                    api: str) -> None:
    agents.set_tracing_disabled(True)
    labelled, cities = Labelled(), []
    run = agents.Runner.run_streamed(agent_of(demo, upstream, api, labelled.http, cities), "Weather in Bergen?")
    text, items = [], []
    async for event in run.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            text.append(event.data.delta)
        elif event.type == "run_item_stream_event":
            items.append(event.name)
    assert items == ["tool_called", "tool_output", "message_output_created"] and len(cities) == 1
    assert "".join(text) == run.final_output and run.final_output
    await _recorded(demo, api, labelled, run)
