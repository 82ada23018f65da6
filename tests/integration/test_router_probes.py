"""The router's probes over real sockets: hosted APIs over TLS with a credential, and every way an endpoint
can fail a probe, each told in words that never carry the credential."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import msgspec
import pytest

from switchyard_gateway.catalog.rules import MODEL_NAME_MAX, model_name_problem
from switchyard_gateway.http1 import tls_context
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.services.router import probes
from switchyard_gateway.services.router.facts import FactsBook
from tests.integration.test_http1_client import raw_server, read_request, reply
from tests.integration.test_http1_fetch import certificate, tls_server

MODELS = b'{"object": "list", "data": [{"id": "gpt-4o-mini"}, {"id": "text-embedding-3-small"}]}'
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"      # the controls that reorder text
HOSTILE = ("\u202eevil\u2066 " + "e" * 10_000).encode()


async def test_a_hosted_api_is_probed_over_tls_with_its_credential(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("SY_TEST_HOSTED_KEY", secret)
    cert, key = certificate(tmp_path, "localhost")
    seen: dict[str, object] = {}
    pool = probes.client(4, ssl_context=tls_context(cafile=str(cert)))
    try:
        async with tls_server(cert, key, seen, MODELS) as port:
            result = await probes.probe(pool, "hosted", "openai", f"https://localhost:{port}/v1",
                                        "${SY_TEST_HOSTED_KEY}", timeout_s=5)
    finally:
        await pool.close()
    request = bytes(seen["request"]).decode()           # type: ignore[arg-type]
    assert request.startswith("GET /v1/models HTTP/1.1\r\nHost: localhost:")
    assert f"Authorization: Bearer {secret}\r\n" in request and "User-Agent: switchyard-router\r\n" in request
    assert seen["sni"] == "localhost" and seen["alpn"] == "http/1.1"
    assert result.ok and result.models == ("gpt-4o-mini", "text-embedding-3-small") and not result.error


async def test_an_openai_style_endpoint_lists_its_models_and_keeps_its_connection() -> None:
    async def answer(reader, writer, _n):
        while await read_request(reader):
            writer.write(reply(MODELS, b"Content-Type: application/json"))
            await writer.drain()

    pool = probes.client(4)
    try:
        async with raw_server(answer) as (url, connections):
            first = await probes.probe(pool, "ep", "openai", url + "/v1", timeout_s=5, prober="r1")
            second = await probes.probe(pool, "ep", "openai", url, timeout_s=5)
    finally:
        await pool.close()
    assert first.ok and first.models == ("gpt-4o-mini", "text-embedding-3-small") == first.loaded
    assert first.prober == "r1" and first.latency_ms > 0 and second.ok
    assert len(connections) == 1                      # the second probe reused the keep-alive connection


@pytest.mark.parametrize(("reply_bytes", "error", "status"), [
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\noverload\n", "HTTP 503 from /v1/models: overload", 503),
    (reply(b"<html>hello</html>"), "unexpected answer from /v1/models: not JSON", 200),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\"", "/v1/models failed: the connection closed", 0),
    # an upstream's text, cut, without the controls that would reverse what a console shows after it
    (b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n%s" % (len(HOSTILE), HOSTILE), "HTTP 500 from /v1/models: evil e", 500),
], ids=["refused", "not-json", "cut-short", "bidi-controls"])
async def test_a_failed_probe_says_what_the_endpoint_did(reply_bytes: bytes, error: str, status: int) -> None:
    async def answer(reader, writer, _n):
        await read_request(reader)
        writer.write(reply_bytes)
        await writer.drain()

    pool = probes.client(4)
    try:
        async with raw_server(answer) as (url, _):
            result = await probes.probe(pool, "ep", "openai", url, timeout_s=5)
    finally:
        await pool.close()
    assert not result.ok and result.error.startswith(error) and result.status == status
    assert len(result.error) <= 500 and not any(ch in BIDI for ch in result.error)


async def test_an_endpoint_that_never_answers_or_refuses_is_reported_within_the_timeout() -> None:
    async def answer(reader, writer, _n):
        await read_request(reader)
        await reader.read()

    pool = probes.client(4)
    refused = pick_free_port(set())
    try:
        async with raw_server(answer) as (url, _):
            silent, dead = await asyncio.gather(
                probes.probe(pool, "ep", "ollama", url, timeout_s=0.5),
                probes.probe(pool, "ep", "ollama", f"http://127.0.0.1:{refused}", timeout_s=0.5))
    finally:
        with contextlib.suppress(Exception):
            await pool.close()
    assert not silent.ok and silent.error == "no answer from /api/tags within 0.5 s" and silent.latency_ms < 3000
    assert not dead.ok and dead.error == f"cannot connect to 127.0.0.1:{refused}: connection refused"


def answers(routes: dict[str, bytes]):
    """A server answering each path (the request line's) with its JSON body, 404 otherwise, on a kept connection."""
    async def answer(reader, writer, _n):
        while request := await read_request(reader):
            path = request.split(b" ", 2)[1].decode()
            body = routes.get(path)
            writer.write(reply(body, b"Content-Type: application/json") if body is not None
                         else b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    return answer



async def test_what_an_ollama_says_is_bounded_and_loses_its_bidirectional_controls() -> None:
    """A 2 MB version made every registry refresh and endpoint test a 500 (larger than one NATS message), and a
    5,000-character one a 45,000 px wide card; names, digests and details are bounded the same way."""
    names = [f"m-{i:05d}" for i in range(3000)] + ["x" * 600, "rtl\u202egnp"]
    tags = {"models": [{"name": n, "digest": BIDI + "d" * 1000} for n in names]}
    show = {"model_info": {"general.architecture": "\u202e" + "a" * 5000}, "capabilities": ["completion"]}
    routes = {"/api/tags": msgspec.json.encode(tags), "/api/ps": msgspec.json.encode({"models": tags["models"][:3]}),
              "/api/version": msgspec.json.encode({"version": "\u202e1." + "9" * 2_000_000}),
              "/api/show": msgspec.json.encode(show)}
    pool = probes.client(4)
    try:
        async with raw_server(answers(routes)) as (url, _):
            result = await probes.probe(pool, "ep", "ollama", url, timeout_s=10, facts=FactsBook())
    finally:
        await pool.close()
    assert result.ok and result.version == "1." + "9" * 97 + "…"
    assert len(result.models) == probes.MAX_MODELS and result.models[:2] == ("m-00000", "m-00001")
    assert result.loaded == ("m-00000", "m-00001", "m-00002")
    assert result.facts and all(len(f.architecture) == probes.DETAIL_CHARS for f in result.facts)
    assert not any(ch in BIDI for f in result.facts for ch in f.architecture)
    assert len(msgspec.json.encode(result)) < 256 * 1024          # far inside one NATS message


async def test_a_long_name_is_cut_past_the_bound_for_the_registry_to_refuse_and_the_total_is_bounded() -> None:
    listing = {"data": [{"id": "y" * 600}, {"id": "ok-model"}, *({"id": f"z{i:04d}" + "z" * 500} for i in range(400))]}
    pool = probes.client(4)
    try:
        async with raw_server(answers({"/v1/models": msgspec.json.encode(listing)})) as (url, _):
            result = await probes.probe(pool, "ep", "openai", url, timeout_s=10)
    finally:
        await pool.close()
    assert sum(map(len, result.models)) <= 64 * 1024 and len(result.models) < 200
    assert "ok-model" in result.models and "y" * (MODEL_NAME_MAX + 1) in result.models
    assert model_name_problem("y" * (MODEL_NAME_MAX + 1)) is not None
