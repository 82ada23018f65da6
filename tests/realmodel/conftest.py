"""Fixtures for the real-model tests: the tiny GGUF model (written once per session), two llama-servers running
it (chat under its default id, the file's path; embeddings under an alias), and both registered in the
session's `switchyard up --demo` as OpenAI-compatible endpoints of a tenant of their own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import DemoStack, wait_for
from tests.realmodel.llama_server import HOW_TO_GET_ONE, LlamaServer, find_binary


@pytest.fixture(scope="session")
def llama_binary() -> str:
    binary = find_binary()
    if binary is None:
        pytest.skip(HOW_TO_GET_ONE)
    return binary


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written once per session (a fraction of a second, about 0.6 MB)."""
    try:
        from tests.realmodel.tiny_gguf import write_tiny_model
        import gguf  # noqa: F401
    except ImportError:
        pytest.skip("the gguf package is missing: pip install -e '.[test]'")
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@dataclass
class Servers:
    chat: LlamaServer
    embed: LlamaServer
    model_path: str                 # the chat server's model id: the path of its model file
    embed_alias: str


@pytest.fixture(scope="session")
def llama(llama_binary: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Two servers: one started without `--embedding` answers /v1/embeddings with 501, one started with it
    would serve chat too, but under the same id; the chat server keeps llama.cpp's default id."""
    logs = tmp_path_factory.mktemp("llama-logs")
    alias = f"tiny-embed-{uuid.uuid4().hex[:6]}"
    chat = LlamaServer(llama_binary, tiny_model, logs / "chat.log")
    embed = LlamaServer(llama_binary, tiny_model, logs / "embed.log", alias=alias, embedding=True)
    try:
        chat.wait_ready()
        embed.wait_ready()
        yield Servers(chat, embed, str(tiny_model), alias)
    finally:
        chat.stop()
        embed.stop()


@dataclass
class RealUpstream:
    """The two servers as the gateway knows them, and a tenant that may use both."""

    demo: DemoStack
    servers: Servers
    tag: str
    key: str
    alias: str                      # the registry's short name for the chat model

    @property
    def chat_endpoint(self) -> str:
        return f"llama-chat-{self.tag}"

    @property
    def embed_endpoint(self) -> str:
        return f"llama-embed-{self.tag}"

    def headers(self, request_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "X-Request-Id": request_id}


async def _admin(client: httpx.AsyncClient, method: str, path: str, body: dict | None = None) -> dict:
    response = await client.request(method, f"/api/admin/{path}", json=body)
    assert response.status_code in (200, 201), (method, path, response.status_code, response.text)
    return response.json()


@pytest.fixture(scope="module")
async def real(llama: Servers, demo: DemoStack) -> AsyncIterator[RealUpstream]:
    """Both servers registered without a model list (discovery finds the path id), the path id given a short
    alias and prices (cached input cheaper) through the admin API, a tenant and its key."""
    tag = uuid.uuid4().hex[:6]
    upstream_alias = f"tiny-{tag}"
    async with httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        await _admin(admin, "POST", "providers", {"provider_id": f"llama-{tag}", "kind": "openai-compatible"})
        for name, server in (("chat", llama.chat), ("embed", llama.embed)):
            await _admin(admin, "POST", "endpoints", {"endpoint_id": f"llama-{name}-{tag}",
                                                      "provider_id": f"llama-{tag}", "base_url": server.url,
                                                      "timeout_s": 30.0})

        async def serving(endpoint: str, model: str) -> bool:
            found = await admin.get(f"/api/admin/endpoints/{endpoint}")
            return model in found.json().get("serving_models", [])

        await wait_for(lambda: serving(f"llama-chat-{tag}", llama.model_path), timeout_s=20,
                       what="discovery of the path id (the router probes a new endpoint at once)")
        await wait_for(lambda: serving(f"llama-embed-{tag}", llama.embed_alias), timeout_s=20,
                       what="discovery of the embedding server's alias")
        await _admin(admin, "PUT", f"models/{quote(llama.model_path, safe='')}", {
            "aliases": [upstream_alias], "input_price_per_1m": 1.0, "output_price_per_1m": 2.0,
            "cached_input_price_per_1m": 0.25})
        await _admin(admin, "POST", "tenants", {"tenant_id": f"llama-{tag}"})
        key = (await _admin(admin, "POST", f"tenants/llama-{tag}/keys", {"name": "real model tests"}))["key"]
        try:
            yield RealUpstream(demo, llama, tag, key, upstream_alias)
        finally:
            for path in (f"tenants/llama-{tag}", f"endpoints/llama-chat-{tag}", f"endpoints/llama-embed-{tag}",
                         f"models/{quote(llama.model_path, safe='')}", f"models/{llama.embed_alias}",
                         f"providers/llama-{tag}"):
                await admin.delete(f"/api/admin/{path}")
