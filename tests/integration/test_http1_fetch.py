"""The HTTP/1.1 client's short exchanges over real sockets: GET without a body, one deadline for the whole
response, a bounded body, and TLS as hosted APIs speak it (host name checked and sent, ALPN http/1.1)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from switchyard_gateway.http1 import ConnectFailed, DeadlineExceeded, Pool, ResponseCut, tls_context
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.integration.test_http1_client import raw_server, read_request, reply


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(max_connections_per_host=4, connect_timeout_s=2.0)
    yield pool
    await pool.close()


def certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for DNS name `name` only (no IP address), and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_get_sends_neither_a_body_nor_a_content_length(pool: Pool) -> None:
    seen: list[bytes] = []

    async def answer(reader, writer, _n):
        seen.append(await read_request(reader))
        writer.write(reply(b'{"data": []}', b"Content-Type: application/json"))
        await writer.drain()

    async with raw_server(answer) as (url, _):
        fetched = await pool.fetch("GET", url + "/v1/models", [("Accept", "application/json")], timeout_s=5)
    assert fetched.status == 200 and fetched.json() == {"data": []}
    assert fetched.headers["content-type"] == "application/json"
    head = seen[0].decode()
    assert head.startswith("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:") and head.endswith("\r\n\r\n")
    assert "content-length" not in head.lower() and "Accept: application/json\r\n" in head


async def test_one_deadline_covers_a_body_that_trickles_in(pool: Pool) -> None:
    """A byte every 100 ms never trips a timeout between bytes; the whole-response deadline still ends it."""
    hung_up = asyncio.Event()

    async def answer(reader, writer, _n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        try:
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            hung_up.set()

    async with raw_server(answer) as (url, _):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="within 0.8 s"):
            await pool.fetch("GET", url + "/slow", timeout_s=0.8)
        assert 0.7 < time.monotonic() - started < 3.0
        assert await asyncio.wait_for(hung_up.wait(), 5) is True       # the connection was closed, not kept


async def test_a_server_that_accepts_and_never_answers_gets_the_deadline(pool: Pool) -> None:
    async def answer(reader, writer, _n):
        await read_request(reader)
        await reader.read()                # say nothing until the client hangs up

    async with raw_server(answer) as (url, _):
        with pytest.raises(DeadlineExceeded):
            await pool.fetch("GET", url + "/v1/models", timeout_s=0.5)


async def test_a_body_over_the_limit_is_refused_and_its_connection_closed(pool: Pool) -> None:
    hung_up = asyncio.Event()

    async def answer(reader, writer, n):
        await read_request(reader)
        if n > 1:
            writer.write(reply(b"small"))
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"y" * 2000)   # more to come
        await writer.drain()
        if await reader.read() == b"":
            hung_up.set()

    async with raw_server(answer) as (url, writers):
        with pytest.raises(ResponseCut, match="larger than 1000 bytes"):
            await pool.fetch("GET", url + "/big", timeout_s=5, max_body_bytes=1000)
        assert await asyncio.wait_for(hung_up.wait(), 5) is True
        fetched = await pool.fetch("GET", url + "/big", timeout_s=5)
    assert fetched.body == b"small" and len(writers) == 2      # the next exchange needed a new connection


async def test_a_refused_connection_says_so() -> None:
    pool = Pool(connect_timeout_s=2.0)
    port = pick_free_port(set())
    try:
        with pytest.raises(ConnectFailed, match=f"cannot connect to 127.0.0.1:{port}: connection refused"):
            await pool.fetch("GET", f"http://127.0.0.1:{port}/", timeout_s=5)
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def tls_server(cert: Path, key: Path, seen: dict[str, object],
                     body: bytes = b'{"ok": true}') -> AsyncIterator[int]:
    """A TLS server offering h2 and http/1.1 that answers every request with a JSON body;
    `seen` gets the name the client sent (SNI) and the protocol ALPN settled on."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.sni_callback = lambda _sock, name, _ctx: seen.__setitem__("sni", name)

    async def answer(reader, writer):
        seen["alpn"] = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while request := await read_request(reader):
                seen["request"] = request
                writer.write(reply(body))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_tls_sends_and_checks_the_host_name_and_asks_for_http_1_1(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, "localhost")
    seen: dict[str, object] = {}
    trusting = Pool(ssl_context=tls_context(cafile=str(cert)))
    try:
        async with tls_server(cert, key, seen) as port:
            fetched = await trusting.fetch("GET", f"https://localhost:{port}/v1/models", timeout_s=5)
            assert fetched.json() == {"ok": True}
            assert seen["sni"] == "localhost" and seen["alpn"] == "http/1.1"
            assert bytes(seen["request"]).startswith(b"GET /v1/models HTTP/1.1\r\nHost: localhost:")  # type: ignore[arg-type]
            with pytest.raises(ConnectFailed, match="(?i)certificate|match"):    # the name is not 127.0.0.1
                await trusting.fetch("GET", f"https://127.0.0.1:{port}/v1/models", timeout_s=5)
    finally:
        await trusting.close()


async def test_tls_refuses_a_certificate_no_system_authority_signed(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path, "localhost")
    pool = Pool()                                   # the system's certificate authorities
    try:
        async with tls_server(cert, key, {}) as port:
            with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
                await pool.fetch("GET", f"https://localhost:{port}/", timeout_s=5)
    finally:
        await pool.close()
