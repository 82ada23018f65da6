"""The OpenAI (chat and Responses) and Ollama front doors against a real llama.cpp `llama-server`, through `switchyard up --demo`.

The tiny model never samples end-of-sequence, so every answer runs to `max_tokens` with `finish_reason`
"length"; every call's usage event must carry the server's own token counts, cached prompt tokens
included. The chat server advertises its model under the model file's path, which the registry aliases.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import uuid

import anthropic
import asyncpg
import jsonschema
import httpx
import ollama
import openai
import pytest

from tests.conftest import wait_for
from tests.e2e.test_demo import exactly_one_usage_row
from tests.realmodel.conftest import RealUpstream

MAX_TOKENS = 12


def messages(text: str = "hello switch yard, count every token") -> list[dict]:
    return [{"role": "user", "content": text}]


def openai_client(real: RealUpstream, request_id: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{real.demo.url}/v1", api_key=real.key, max_retries=0, timeout=30,
                              default_headers={"X-Request-Id": request_id})


def ollama_client(real: RealUpstream, request_id: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=real.demo.url, timeout=30, headers=real.headers(request_id))


async def server_usage(real: RealUpstream, path: str, body: dict, embed: bool = False) -> dict:
    """The server's own usage for a call, asked of it directly (prompt counts are deterministic)."""
    server = real.servers.embed if embed else real.servers.chat
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{server.url}{path}", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["usage"]


def counts(event: dict) -> tuple[int, int, int]:
    return event["input_tokens"], event["output_tokens"], event["cached_tokens"]


def cached_of(usage: dict) -> int:
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)


async def test_the_path_id_is_discovered_listed_and_reached_through_its_alias(real: RealUpstream) -> None:
    path = real.servers.model_path
    async with httpx.AsyncClient(timeout=10) as client:
        listed = await client.get(f"{real.demo.url}/v1/models", headers=real.headers(uuid.uuid4().hex))
    assert {path, real.servers.embed_alias} <= {m["id"] for m in listed.json()["data"]}
    request_id = uuid.uuid4().hex
    reply = await openai_client(real, request_id).chat.completions.create(
        model=real.alias, messages=messages(), max_tokens=MAX_TOKENS)
    assert reply.model == path and reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == MAX_TOKENS
    event = await exactly_one_usage_row(real.demo, request_id)
    assert (event["model"], event["requested_model"], event["upstream_model"]) == (path, real.alias, path)
    assert (event["endpoint_id"], event["outcome"], event["estimated"]) == (real.chat_endpoint, "ok", False)
    usage = reply.usage.model_dump()
    assert counts(event) == (usage["prompt_tokens"], MAX_TOKENS, cached_of(usage))


@pytest.mark.parametrize("include_usage", [True, False])
async def test_streamed_chat_is_metered_with_the_servers_own_counts(real: RealUpstream, include_usage: bool) -> None:
    body = {"model": real.alias, "messages": messages("stream to the end"), "max_tokens": MAX_TOKENS, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    request_id = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{real.demo.url}/v1/chat/completions", json=body, headers=real.headers(request_id))
    assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
    chunks = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    relayed = [c["usage"] for c in chunks if c.get("usage")]
    event = await exactly_one_usage_row(real.demo, request_id)
    assert event["stream"] is True and event["estimated"] is False and event["output_tokens"] == MAX_TOKENS
    prompt = (await server_usage(real, "/v1/chat/completions", {**body, "stream": False, "max_tokens": 1}))
    assert event["input_tokens"] == prompt["prompt_tokens"]
    if include_usage:
        assert len(relayed) == 1 and counts(event) == (relayed[0]["prompt_tokens"], relayed[0]["completion_tokens"],
                                                       cached_of(relayed[0]))
    else:
        assert relayed == [] and '"usage"' not in answer.text


async def test_a_repeated_prompt_records_cached_tokens_priced_at_the_cached_price(real: RealUpstream) -> None:
    text = f"repeat after me {uuid.uuid4().hex}: the quick brown fox jumps over the lazy dog " * 3
    replies = []
    for _ in range(2):
        request_id = uuid.uuid4().hex
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{real.demo.url}/v1/chat/completions", headers=real.headers(request_id),
                                       json={"model": real.alias, "messages": messages(text), "max_tokens": 4})
        replies.append((answer.json()["usage"], await exactly_one_usage_row(real.demo, request_id)))
    (first, first_event), (second, second_event) = replies
    assert cached_of(second) >= second["prompt_tokens"] - 1 > cached_of(first)   # all but the last prompt token
    for usage, event in replies:
        assert counts(event) == (usage["prompt_tokens"], usage["completion_tokens"], cached_of(usage))
    await _views_agree_with_the_log(real)


async def _tenant_events(real: RealUpstream) -> list[dict]:
    conn = await asyncpg.connect(real.demo.database_url)
    try:
        rows = await conn.fetch("SELECT payload::text AS p FROM events WHERE type = 'usage.recorded.v2'"
                                " AND tenant = $1", f"llama-{real.tag}")
    finally:
        await conn.close()
    return [json.loads(r["p"]) for r in rows]


async def _views_agree_with_the_log(real: RealUpstream) -> None:
    """Token counts, stats and the tenant's usage view show the cached tokens of the log, and its cost at the
    model's prices: 1.0 USD per 1M input tokens, 0.25 per 1M cached ones, 2.0 per 1M output tokens."""
    events = [e for e in await _tenant_events(real) if e["model"] == real.servers.model_path]
    cached = sum(e["cached_tokens"] for e in events)
    cost = sum((e["input_tokens"] - e["cached_tokens"]) * 1.0 + e["cached_tokens"] * 0.25 + e["output_tokens"] * 2.0
               for e in events) / 1e6
    headers = {"Authorization": f"Bearer {real.key}"}
    async with httpx.AsyncClient(base_url=real.demo.url, headers=headers, timeout=10) as client:
        async def token_counts() -> dict | None:
            rows = (await client.get("/api/token_counts")).json()["breakdown"]
            row = next((r for r in rows if r["model"] == real.servers.model_path), None)
            return row if row and row["calls"] == len(events) else None

        row = await wait_for(token_counts, timeout_s=15, what="metering to count every call")
        assert row["cached_tokens"] == cached and row["input_tokens"] == sum(e["input_tokens"] for e in events)
        stats = (await client.post("/api/stats", json={"model": real.alias})).json()
        assert (stats["calls"], stats["cached_tokens"]) == (len(events), cached)
        assert stats["cost_usd"] == pytest.approx(cost, rel=1e-9)

        async def settled() -> dict | None:
            view = (await client.get("/api/v1/tenant-models/usage", params={"period": "day"})).json()
            return view if view["usage"]["requests"] == len(events) else None

        view = await wait_for(settled, timeout_s=15, what="quota counters to settle every call")
        assert view["usage"]["cached_tokens"] == cached
        assert [m["cached_tokens"] for m in view["models"] if m["model_id"] == real.servers.model_path] == [cached]
        assert view["usage"]["cost_usd"] == pytest.approx(cost, abs=1e-8)      # nano-USD per call, rounded


@pytest.mark.parametrize("stream", [False, True])
async def test_text_completions_run_to_max_tokens_and_are_metered_exactly(real: RealUpstream, stream: bool) -> None:
    request_id = uuid.uuid4().hex
    client = openai_client(real, request_id)
    if stream:
        chunks = [c async for c in await client.completions.create(
            model=real.alias, prompt="Once upon a time", max_tokens=MAX_TOKENS, stream=True,
            stream_options={"include_usage": True})]
        usage = chunks[-1].usage.model_dump()
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    else:
        reply = await client.completions.create(model=real.alias, prompt="Once upon a time", max_tokens=MAX_TOKENS)
        usage = reply.usage.model_dump()
        assert reply.choices[0].finish_reason == "length"
    assert usage["completion_tokens"] == MAX_TOKENS
    event = await exactly_one_usage_row(real.demo, request_id)
    assert event["api"] == "openai.completions"
    assert counts(event) == (usage["prompt_tokens"], MAX_TOKENS, cached_of(usage))


async def test_embeddings_are_counted_as_the_server_counts_them(real: RealUpstream) -> None:
    request_id = uuid.uuid4().hex
    texts = ["hello switch yard", "the quick brown fox"]
    reply = await openai_client(real, request_id).embeddings.create(model=real.servers.embed_alias, input=texts)
    assert [len(item.embedding) for item in reply.data] == [64, 64]
    own = await server_usage(real, "/v1/embeddings", {"input": texts}, embed=True)
    assert reply.usage.prompt_tokens == own["prompt_tokens"] > 0
    event = await exactly_one_usage_row(real.demo, request_id)
    assert (event["api"], event["endpoint_id"]) == ("openai.embeddings", real.embed_endpoint)
    assert counts(event) == (own["prompt_tokens"], 0, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_chat_is_translated_and_metered_with_the_servers_counts(real: RealUpstream, stream: bool) -> None:
    request_id = uuid.uuid4().hex
    asked = messages("ollama says hello")
    async with httpx.AsyncClient(timeout=30) as client:        # raw NDJSON: the client library drops cached counts
        answer = await client.post(f"{real.demo.url}/api/chat", headers=real.headers(request_id), json={
            "model": real.alias, "messages": asked, "stream": stream, "options": {"num_predict": MAX_TOKENS}})
    assert answer.status_code == 200
    lines = [json.loads(line) for line in answer.text.splitlines()]
    final = lines[-1]
    assert final["done"] and final["done_reason"] == "length" and final["eval_count"] == MAX_TOKENS
    assert len(lines) > 1 if stream else len(lines) == 1
    own = await server_usage(real, "/v1/chat/completions", {"messages": asked, "max_tokens": 1})
    assert final["prompt_eval_count"] == own["prompt_tokens"]
    event = await exactly_one_usage_row(real.demo, request_id)
    assert (event["api"], event["stream"]) == ("ollama.chat", stream)
    assert counts(event) == (own["prompt_tokens"], MAX_TOKENS, final.get("prompt_eval_cached_count", 0))


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_are_translated_and_metered_with_the_servers_counts(real: RealUpstream, stream: bool) -> None:
    """The Responses door (`client.responses.create` / `.stream`) on llama-server's chat completions: the answer
    runs to `max_output_tokens` (`incomplete`), its usage the server's own, recorded once."""
    request_id = uuid.uuid4().hex
    client = openai_client(real, request_id)
    asked = dict(model=real.alias, instructions="Be brief.", input="responses say hello", max_output_tokens=MAX_TOKENS)
    if stream:
        events = [event async for event in await client.responses.create(**asked, stream=True)]
        kinds = [event.type for event in events]
        assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.incomplete"
        response = events[-1].response
        assert response.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        response = await client.responses.create(**asked)
    own = await server_usage(real, "/v1/chat/completions", {"messages": [
        {"role": "system", "content": "Be brief."}, *messages("responses say hello")], "max_tokens": 1})
    event = await exactly_one_usage_row(real.demo, request_id)
    assert (event["api"], event["stream"]) == ("openai.responses", stream)
    assert (event["input_tokens"], event["output_tokens"]) == (own["prompt_tokens"], MAX_TOKENS)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (response.usage.input_tokens, response.usage.output_tokens) == (own["prompt_tokens"], MAX_TOKENS)
    assert response.output_text


async def test_ollama_generate_and_embed_are_translated_and_metered(real: RealUpstream) -> None:
    request_id = uuid.uuid4().hex
    generated = await ollama_client(real, request_id).generate(model=real.alias, prompt="Once upon a time",
                                                               stream=False, options={"num_predict": MAX_TOKENS})
    assert generated.done_reason == "length" and generated.eval_count == MAX_TOKENS and generated.prompt_eval_count
    event = await exactly_one_usage_row(real.demo, request_id)
    assert event["api"] == "ollama.generate"
    assert (event["input_tokens"], event["output_tokens"]) == (generated.prompt_eval_count, MAX_TOKENS)

    request_id = uuid.uuid4().hex
    embedded = await ollama_client(real, request_id).embed(model=real.servers.embed_alias,
                                                           input=["hello switch yard", "again"])
    assert [len(v) for v in embedded.embeddings] == [64, 64]
    own = await server_usage(real, "/v1/embeddings", {"input": ["hello switch yard", "again"]}, embed=True)
    event = await exactly_one_usage_row(real.demo, request_id)
    assert event["api"] == "ollama.embed" and embedded.prompt_eval_count == own["prompt_tokens"]
    assert counts(event) == (own["prompt_tokens"], 0, 0)


STREAMING_CLIENT = textwrap.dedent("""
    import sys, httpx
    url, key, request_id, body = sys.argv[1:5]
    headers = {"Authorization": "Bearer " + key, "X-Request-Id": request_id, "content-type": "application/json"}
    with httpx.stream("POST", url, content=body, headers=headers, timeout=30) as answer:
        for chunk in answer.iter_raw():
            print("streaming", flush=True)
            sys.stdin.readline()          # hold here, mid-stream, until killed
""")


async def test_a_client_killed_mid_stream_leaves_exactly_one_usage_event(real: RealUpstream) -> None:
    request_id = uuid.uuid4().hex
    # every token carries its probabilities over the whole vocabulary: megabytes of stream, far more than
    # the sockets buffer, so the gateway is still relaying when the client dies
    body = {"model": real.alias, "messages": messages("a long story please"), "max_tokens": 400, "stream": True,
            "n_probs": 400}
    client = subprocess.Popen(
        [sys.executable, "-c", STREAMING_CLIENT, f"{real.demo.url}/v1/chat/completions", real.key, request_id,
         json.dumps(body)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 30)   # type: ignore[union-attr]
        assert line == b"streaming\n"
        client.send_signal(signal.SIGKILL)
    finally:
        client.kill()
        client.wait(10)
    event = await exactly_one_usage_row(real.demo, request_id)
    assert event["outcome"] == "cancelled" and event["stream"] is True
    assert event["output_tokens"] < 400 and event["endpoint_id"] == real.chat_endpoint


async def test_what_llama_server_says_of_its_model_reaches_ollama_tools(real: RealUpstream) -> None:
    """/api/show carries llama-server's own capabilities and trained context (its /v1/models and /props, read at
    the router's probe); it names no architecture, so none is invented. A whole answer's durations split as
    its `timings` say, and the model's path id is found by `models.retrieve`."""
    client = ollama_client(real, uuid.uuid4().hex)

    async def shown() -> ollama.ShowResponse | None:
        answer = await client.show(real.alias)
        return answer if answer.modelinfo and "unknown.context_length" in answer.modelinfo else None

    show = await wait_for(shown, timeout_s=30, what="the model's facts from the router's probe")
    assert show.capabilities == ["completion"] and show.modelinfo["general.architecture"] == "unknown"
    assert show.modelinfo["unknown.context_length"] == 512            # the tiny model's trained context
    answer = await client.chat(model=real.alias, messages=messages("time me"), options={"num_predict": MAX_TOKENS})
    assert answer.prompt_eval_duration and answer.prompt_eval_duration > 0 and answer.eval_duration > 0
    assert answer.load_duration + answer.prompt_eval_duration + answer.eval_duration <= answer.total_duration
    retrieved = await openai.AsyncOpenAI(base_url=f"{real.demo.url}/v1", api_key=real.key).models.retrieve(
        real.servers.model_path)
    assert retrieved.id == real.servers.model_path


VERDICT = {"type": "object", "properties": {"ok": {"type": "boolean"}, "stars": {"type": "integer", "enum": [1, 2, 3]}},
           "required": ["ok", "stars"], "additionalProperties": False}


async def _structured(real: RealUpstream, door: str, request_id: str) -> str:
    """The text of an answer asked to follow VERDICT, through one door."""
    asked = messages("judge the switch yard")
    if door == "openai.chat":
        answer = await openai_client(real, request_id).chat.completions.create(
            model=real.alias, messages=asked, max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}})
        return answer.choices[0].message.content or ""
    if door == "openai.responses":
        response = await openai_client(real, request_id).responses.create(
            model=real.alias, input=asked, max_output_tokens=200,
            text={"format": {"type": "json_schema", "name": "verdict", "schema": VERDICT}})
        return response.output_text
    if door == "anthropic.messages":
        message = await anthropic.AsyncAnthropic(
            base_url=real.demo.url, api_key=real.key, max_retries=0, timeout=30,
            default_headers={"X-Request-Id": request_id}).messages.create(
            model=real.alias, messages=asked, max_tokens=200,
            output_config={"format": {"type": "json_schema", "schema": VERDICT}})
        return "".join(block.text for block in message.content if block.type == "text")
    answer = await ollama_client(real, request_id).chat(model=real.alias, messages=asked, format=VERDICT,
                                                        options={"num_predict": 200})
    return answer.message.content or ""


@pytest.mark.parametrize("door", ["openai.chat", "openai.responses", "ollama.chat", "anthropic.messages"])
async def test_an_answer_asked_to_follow_a_json_schema_follows_it(real: RealUpstream, door: str) -> None:
    """Each door's way of asking for structured output (`response_format`, Responses' `text.format`, Ollama's
    `format` schema, Anthropic's `output_config.format`) reaches llama-server as a JSON schema its grammar holds the model to: a model of random
    weights answers JSON of the schema, ended by the grammar rather than by `max_tokens`."""
    request_id = uuid.uuid4().hex
    said = json.loads(await _structured(real, door, request_id))
    jsonschema.validate(said, VERDICT)
    event = await exactly_one_usage_row(real.demo, request_id)
    assert (event["api"], event["outcome"]) == (door, "ok") and 0 < event["output_tokens"] < 200


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_asked_for_log_probabilities_carry_one_per_token(real: RealUpstream, stream: bool) -> None:
    """`include: ["message.output_text.logprobs"]` with `top_logprobs` reaches llama-server as chat `logprobs`: every
    token of the text has its log probability and as many alternatives as asked, whole or streamed."""
    client = openai_client(real, uuid.uuid4().hex)
    asked = dict(model=real.alias, input="score every token", max_output_tokens=MAX_TOKENS, top_logprobs=2,
                 include=["message.output_text.logprobs"])
    if stream:       # read raw: the SDK's `get_final_response()` raises on an incomplete Response (max tokens)
        events = [event async for event in await client.responses.create(**asked, stream=True)]
        deltas = [event for event in events if event.type == "response.output_text.delta"]
        assert sum(len(delta.logprobs) for delta in deltas) == MAX_TOKENS
        response = events[-1].response
    else:
        response = await client.responses.create(**asked)
    [part] = response.output[0].content
    assert len(part.logprobs) == MAX_TOKENS == response.usage.output_tokens
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in part.logprobs)
    assert "".join(entry.token for entry in part.logprobs) == part.text
