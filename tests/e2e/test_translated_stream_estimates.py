"""End to end: a translated stream whose upstream sends big chunks and no usage, through `switchyard up --demo`.

One raw upstream (`Unmetered`) stands behind an OpenAI-compatible endpoint and an Ollama one: it streams ten chunks
of 200 bytes of text and no token counts, whatever it is asked. The Ollama door (translated from the OpenAI one) and
the Anthropic door (from either) must bill what it wrote, a token per 4 bytes as the OpenAI door does (500 tokens),
not a token per chunk (10); the Anthropic stream shows the prompt's tokens from its first event, as the tenant's
daily limit had them counted.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import DemoStack, wait_for
from tests.e2e.test_anthropic_front_door import add_tenant
from tests.e2e.test_demo import exactly_one_usage_row
from tests.e2e.test_quota_e2e import set_limits
from tests.raw_upstream import RawUpstream

PIECE = "word " * 40                     # 200 bytes a chunk
WRITTEN_TOKENS = 10 * len(PIECE) // 4    # 500


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def openai_stream(model: str) -> bytes:
    head = {"id": "chatcmpl-unmetered", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    deltas = [{"role": "assistant", "content": ""}, *({"content": PIECE} for _ in range(10))]
    return b"".join(_sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}) for d in deltas) \
        + _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"data: [DONE]\n\n"


def ollama_stream(model: str) -> bytes:
    def line(content: str, done: bool) -> bytes:
        return json.dumps({"model": model, "created_at": "2026-01-01T00:00:00Z", "done": done,
                           "message": {"role": "assistant", "content": content}}).encode() + b"\n"
    return b"".join(line(PIECE, False) for _ in range(10)) + line("", True)     # no prompt_eval_count, eval_count


class Unmetered(RawUpstream):
    """An OpenAI-compatible and Ollama server in one, listing `models` and streaming every call without counts."""

    def __init__(self, models: list[str]) -> None:
        super().__init__()
        self.models = models

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        path = head.split(b" ", 2)[1].decode()
        listings = {"/v1/models": {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]},
                    "/api/tags": {"models": [{"name": m, "model": m, "digest": "0" * 12} for m in self.models]},
                    "/api/ps": {"models": []}, "/api/version": {"version": "0.6.0"},
                    "/api/show": {"capabilities": ["completion"], "model_info": {}}}
        if path in listings:
            kind, data = b"application/json", json.dumps(listings[path]).encode()
        elif path == "/api/chat":
            kind, data = b"application/x-ndjson", ollama_stream(json.loads(body)["model"])
        else:
            kind, data = b"text/event-stream", openai_stream(json.loads(body)["model"])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (kind, len(data), data))
        await writer.drain()


@dataclass
class Rig:
    demo: DemoStack
    key: str
    translated: str          # a model of the OpenAI-compatible endpoint
    native: str              # a model of the Ollama endpoint

    async def post(self, client: httpx.AsyncClient, path: str, body: dict) -> tuple[str, httpx.Response]:
        request_id = f"unmetered-{uuid.uuid4().hex}"
        response = await client.post(f"{self.demo.url}{path}", json=body,
                                     headers={"Authorization": f"Bearer {self.key}", "X-Request-Id": request_id})
        assert response.status_code == 200, response.text[:300]
        return request_id, response


@pytest.fixture(scope="module")
async def rig(demo: DemoStack) -> AsyncIterator[Rig]:
    prefix = f"unmetered-{uuid.uuid4().hex[:6]}"
    translated, native = f"{prefix}-translated", f"{prefix}-native"
    kinds = {"openai-compatible": (f"{prefix}-openai", translated), "ollama": (f"{prefix}-ollama", native)}
    async with Unmetered([translated, native]) as upstream, \
            httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        for kind, (name, model) in kinds.items():
            for path, body in (("providers", {"provider_id": name, "kind": kind}),
                               ("models", {"model_id": model, "kind": "chat", "context_length": 8192}),
                               ("endpoints", {"endpoint_id": name, "provider_id": name, "base_url": upstream.url,
                                              "models": [model], "timeout_s": 10.0})):
                answer = await admin.post(f"/api/admin/{path}", json=body)
                assert answer.status_code == 201, (path, answer.text)
        rig = Rig(demo, await add_tenant(demo, prefix, [translated, native]), translated, native)
        assert set_limits(demo, prefix, daily_tokens=10_000_000).status_code == 200

        async def served() -> bool:
            """Both models answer, held by the daily limit (on each of the demo's gateway workers, most likely)."""
            async with httpx.AsyncClient(timeout=30) as client:
                answers = [await client.post(f"{demo.url}/api/chat", headers={"Authorization": f"Bearer {rig.key}"},
                                             json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
                           for model in (translated, native, translated, native)]
            return all(a.status_code == 200 and "x-ratelimit-limit-tokens" in a.headers for a in answers)

        await wait_for(served, 15, what="both endpoints to serve under the daily limit")
        try:
            yield rig
        finally:
            for name, model in kinds.values():
                for path in (f"endpoints/{name}", f"models/{model}", f"providers/{name}"):
                    await admin.delete(f"/api/admin/{path}")
            await admin.delete(f"/api/admin/tenants/{prefix}")


MESSAGES = [{"role": "user", "content": "Write two thousand bytes, please."}]
AS_MUCH = {"options": {"num_predict": 1000}}     # an estimate is held to the output asked (else the limit's default)


async def test_big_chunks_without_usage_are_billed_by_what_they_wrote_on_the_translated_doors(rig: Rig) -> None:
    """Ten chunks of 200 bytes were billed 10 output tokens on the Ollama and Anthropic doors (a token per chunk);
    they are billed 500, a token per 4 bytes written, as the OpenAI door bills them. The Anthropic stream's
    `message_start` says the prompt's tokens as the gateway counted them (it said 0), and `message_delta` the totals
    recorded."""
    async with httpx.AsyncClient(timeout=30) as client:
        calls = await asyncio.gather(
            rig.post(client, "/api/chat", {"model": rig.translated, "messages": MESSAGES, **AS_MUCH}),
            rig.post(client, "/api/generate", {"model": rig.translated, "prompt": MESSAGES[0]["content"], **AS_MUCH}),
            *(rig.post(client, "/v1/messages", {"model": model, "max_tokens": 1000, "stream": True,
                                                "messages": MESSAGES}) for model in (rig.translated, rig.native)))
    rows = await asyncio.gather(*(exactly_one_usage_row(rig.demo, request_id) for request_id, _ in calls))
    for (request_id, response), row in zip(calls, rows, strict=True):
        assert (row["outcome"], row["estimated"], row["output_tokens"]) == ("ok", True, WRITTEN_TOKENS), row
        assert row["input_tokens"] > 5, row
    for (_, response), row in zip(calls[:2], rows[:2], strict=True):
        last = json.loads(response.text.splitlines()[-1])
        assert (last["done"], last["eval_count"], last["prompt_eval_count"]) == \
            (True, WRITTEN_TOKENS, row["input_tokens"]), last
    for (_, response), row in zip(calls[2:], rows[2:], strict=True):
        events = [json.loads(block.split("\n")[1][6:]) for block in response.text.split("\n\n") if block]
        assert events[0]["message"]["usage"] == {"input_tokens": row["input_tokens"], "output_tokens": 0}
        assert events[-2]["usage"] == {"input_tokens": row["input_tokens"], "output_tokens": WRITTEN_TOKENS}
