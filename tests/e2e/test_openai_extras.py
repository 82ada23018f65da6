"""End to end: the OpenAI front door's embedding options (base64, `dimensions`) on both endpoint kinds, and /v1/models per tenant."""

from __future__ import annotations

import array
import base64
import math
from collections.abc import AsyncIterator

import openai
import pytest

from tests.conftest import DemoStack
from tests.e2e.test_ollama_front_door import Upstream, registered_upstream

KINDS = ["embed-native", "embed-translated"]     # served by an Ollama endpoint, by an OpenAI-compatible one


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, "fdx") as registered:
        yield registered


def client(demo: DemoStack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=key, max_retries=0)


def unpack(encoded: str) -> list[float]:
    return array.array("f", base64.b64decode(encoded)).tolist()


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


@pytest.mark.parametrize("served", KINDS)
async def test_base64_embeddings_are_little_endian_float32_vectors(demo: DemoStack, upstream: Upstream,
                                                                   served: str) -> None:
    reply = await client(demo, upstream.key).embeddings.create(
        model=upstream.model(served), input=["one sentence", "and another"], encoding_format="base64")
    assert len(reply.data) == 2
    for item in reply.data:
        assert isinstance(item.embedding, str)
        vector = unpack(item.embedding)
        assert len(vector) == 768 and abs(norm(vector) - 1.0) < 1e-3
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize("served", KINDS)
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_dimensions_shorten_vectors_to_unit_length(demo: DemoStack, upstream: Upstream, served: str,
                                                         encoding: str) -> None:
    reply = await client(demo, upstream.key).embeddings.create(
        model=upstream.model(served), input="a sentence to shorten", dimensions=256,
        encoding_format=encoding)  # type: ignore[arg-type]
    vector = reply.data[0].embedding
    floats = unpack(vector) if encoding == "base64" else vector
    assert isinstance(vector, str if encoding == "base64" else list)
    assert len(floats) == 256 and abs(norm(floats) - 1.0) < 1e-3


async def test_default_client_embeddings_come_back_as_floats(demo: DemoStack, upstream: Upstream) -> None:
    # the client asks for base64 by default and decodes it itself
    reply = await client(demo, upstream.key).embeddings.create(model=upstream.model("embed-translated"), input="hi")
    assert isinstance(reply.data[0].embedding, list) and len(reply.data[0].embedding) == 768


async def test_models_lists_only_what_the_tenant_may_use(demo: DemoStack, upstream: Upstream) -> None:
    narrow = [m.id async for m in client(demo, upstream.narrow_key).models.list()]
    assert narrow == [upstream.model("native")]
    everything = {m.id async for m in client(demo, upstream.key).models.list()}
    assert everything == {upstream.model(n) for n in ("native", "translated", "embed-native", "embed-translated")}
