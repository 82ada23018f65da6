"""The gateway served by granian (`SWITCHYARD_HTTP_SERVER=granian`) instead of our own server: the same calls
answered the same way, so an operator may switch back. Every other end-to-end test runs on our server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_quota_e2e import Gateway, start_gateway, stop_gateway
from tests.e2e.test_ws_embeddings import exactly, opened, until_closed


@pytest.fixture(scope="module")
def granian_gateway(demo: DemoStack, urls) -> Iterator[Gateway]:
    gateway = start_gateway(demo, urls, http_server="granian", ws_idle_timeout_s="3")                    # the first message may take a loaded second
    yield gateway
    stop_gateway(gateway)


def test_chat_and_streams_through_granian(demo: DemoStack, granian_gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {demo.demo_key}"}
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=granian_gateway.url, headers=headers, timeout=30) as client:
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200 and answer.headers.get("server") == "granian"    # granian answered
        assert answer.json()["choices"][0]["message"]["content"]
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            lines = [line for line in streamed.iter_lines() if line]
        assert streamed.status_code == 200 and lines[-1] == "data: [DONE]"
        refused = client.post("/v1/chat/completions", content=b"{" * 10, headers={"content-type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["message"]


async def test_websocket_embeddings_through_granian(demo: DemoStack, granian_gateway: Gateway) -> None:
    connection = f"granian-{uuid.uuid4().hex[:8]}"
    async with opened(granian_gateway.url, demo.demo_key, **{"x-request-id": connection}) as ws:
        await ws.send(json.dumps({"id": "a", "model": "nomic-embed-text", "input": "hello"}))
        answer = json.loads(await ws.recv())
        assert answer["id"] == "a" and answer["status"] == 200 and answer["data"][0]["embedding"]
        assert await until_closed(ws) == [{"type": "close", "code": 1001, "reason": "idle for 3 s"}]
    assert len(await exactly(demo, connection, 1)) == 1
