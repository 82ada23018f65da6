"""The router's probes over real sockets: hosted APIs over TLS with a credential, and every way an endpoint
can fail a probe, each told in words that never carry the credential."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import pytest

from switchyard_gateway.http1 import tls_context
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.services.router import probes
from tests.integration.test_http1_client import raw_server, read_request, reply
from tests.integration.test_http1_fetch import certificate, tls_server

MODELS = b'{"object": "list", "data": [{"id": "gpt-4o-mini"}, {"id": "text-embedding-3-small"}]}'


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


@pytest.mark.parametrize(("reply_bytes", "error"), [
    (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\noverload\n", "HTTP 503 from /v1/models: overload"),
    (reply(b"<html>hello</html>"), "unexpected answer from /v1/models: not JSON"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\"", "/v1/models failed: the connection closed"),
])
async def test_a_failed_probe_says_what_the_endpoint_did(reply_bytes: bytes, error: str) -> None:
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
    assert not result.ok and result.error.startswith(error)
    assert result.status == (503 if b" 503 " in reply_bytes else 200 if b"html" in reply_bytes else 0)


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
