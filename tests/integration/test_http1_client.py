"""The gateway's HTTP/1.1 upstream client over real loopback HTTP: the simulator, or tiny raw servers.

Run as a script, it compares the client's CPU per proxied call with aiohttp's, against a
simulator subprocess (uvloop, 32 in flight):

    python -m tests.integration.test_http1_client --requests 20000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from switchyard_gateway.http1 import AnswerTooLarge, AnswerTooSlow, ConnectFailed, Pool, ReadTimeout, ResponseCut
from switchyard_gateway.http1.conn import PAUSE_ABOVE_BYTES
from switchyard_gateway.http1.wire import MAX_HEAD_BYTES

CHAT_PATH = "/v1/chat/completions"
JSON = [("Content-Type", "application/json")]
_HELLO = [{"role": "user", "content": "hello there yard"}]
CHAT = json.dumps({"model": "llama3.2", "messages": _HELLO}).encode()
STREAM = json.dumps({"model": "llama3.2", "messages": _HELLO, "stream": True}).encode()


async def wait_for(condition: Callable[[], object], timeout_s: float = 3.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def upstream() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(tokens=8)) as sim:
        yield sim


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    pool = Pool(max_connections_per_host=8, connect_timeout_s=2.0)
    yield pool
    await pool.close()


async def chat(pool: Pool, sim: Simulator, body: bytes = CHAT, **kw: float) -> tuple[int, bytes]:
    resp = await pool.request("POST", sim.url + CHAT_PATH, body, JSON, **kw)
    try:
        return resp.status, await resp.read()
    finally:
        resp.release()


# --- raw servers, for replies the simulator does not make ------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handle: Handler) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """Serve each connection with `handle(reader, writer, connection_number)`; yields the base
    URL and the connections' writers, in the order they connected."""
    writers: list[asyncio.StreamWriter] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handle(reader, writer, len(writers))
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", writers
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and Content-Length body; b"" when the client closed instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def reply(body: bytes, *fields: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body), b"".join(f + b"\r\n" for f in fields), body
    )  # fmt: skip


# --- replies -----------------------------------------------------------------------------------


async def test_chat_completion_returns_status_headers_and_json_body(pool, upstream):
    resp = await pool.request("POST", upstream.url + CHAT_PATH, CHAT, JSON)
    body = await resp.read()
    resp.release()
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(body)
    reply = json.loads(body)
    assert reply["model"] == "llama3.2"
    assert reply["usage"]["completion_tokens"] == 8


async def test_streamed_chat_arrives_chunk_by_chunk_before_the_stream_ends(pool, upstream):
    upstream.configure(token_interval_ms=30)
    resp = await pool.request("POST", upstream.url + CHAT_PATH, STREAM, JSON)
    arrivals = []
    async for data in resp:
        arrivals.append((time.monotonic(), data))
    resp.release()
    assert resp.headers["content-type"].startswith("text/event-stream")
    first_at, first = arrivals[0]
    assert b"[DONE]" not in first
    assert arrivals[-1][0] - first_at > 0.1  # the first chunk came well before the end
    body = b"".join(data for _, data in arrivals)
    assert body.rstrip().endswith(b"data: [DONE]")
    assert body.count(b"data: ") >= 8


async def test_head_and_204_replies_have_no_body_and_keep_the_connection(pool, upstream):
    resp = await pool.request("HEAD", upstream.url + "/v1/models", b"", ())
    assert resp.status == 200
    assert int(resp.headers["content-length"]) > 0
    assert await resp.read() == b""
    resp.release()
    assert (await chat(pool, upstream))[0] == 200
    assert upstream.stats.connections == 1

    async def no_content(reader, writer, _):
        while await read_request(reader):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with raw_server(no_content) as (url, writers):
        for _ in range(3):
            resp = await pool.request("DELETE", url + "/thing", b"", ())
            assert (resp.status, await resp.read()) == (204, b"")
        assert len(writers) == 1


async def test_chunked_reply_with_extensions_and_trailers_is_dechunked(pool):
    wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n0b\r\nchunked yar\r\n1;x\r\nd\r\n0\r\nTrailer: x\r\n\r\n"

    async def chunked(reader, writer, _):
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(wire), 3):  # in dribbles, splitting every line somewhere
                writer.write(wire[i : i + 3])
                await writer.drain()
                await asyncio.sleep(0.001)

    async with raw_server(chunked) as (url, writers):
        for _ in range(2):
            resp = await pool.request("GET", url + "/", b"", ())
            assert await resp.read() == b"hello chunked yard"
        assert len(writers) == 1


async def test_close_delimited_reply_is_read_until_the_server_closes(pool):
    async def http10(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"second part")
        await writer.drain()

    async with raw_server(http10) as (url, writers):
        resp = await pool.request("GET", url + "/", b"", ())
        assert await resp.read() == b"first part, second part"
        resp = await pool.request("GET", url + "/", b"", ())
        assert await resp.read() == b"first part, second part"
        assert len(writers) == 2


async def test_connection_close_from_the_server_closes_after_the_reply(pool):
    eof = asyncio.Event()

    async def closing(reader, writer, _):
        await read_request(reader)
        writer.write(reply(b"bye", b"Connection: close"))
        if not await read_request(reader):
            eof.set()

    async with raw_server(closing) as (url, _):
        resp = await pool.request("GET", url + "/", b"", ())
        assert await resp.read() == b"bye"
        await asyncio.wait_for(eof.wait(), 3)


async def test_repeated_response_headers_are_joined_and_names_lowercased(pool):
    async def headers(reader, writer, _):
        await read_request(reader)
        writer.write(reply(b"{}", b"X-Thing: a", b"x-thing: b", b"Retry-After:  3 "))

    async with raw_server(headers) as (url, _):
        resp = await pool.request("GET", url + "/", b"", ())
        assert resp.headers["x-thing"] == "a, b"
        assert resp.headers["retry-after"] == "3"
        await resp.read()


async def test_request_carries_host_length_and_the_given_headers_in_one_write(pool):
    seen: list[bytes] = []

    async def echo(reader, writer, _):
        seen.append(await read_request(reader))
        writer.write(reply(b"ok"))

    async with raw_server(echo) as (url, _):
        resp = await pool.request("POST", url + "/p?q=1", b"abc", [("X-Key", "v"), ("A", "b")])
        await resp.read()
    port = url.rsplit(":", 1)[1]
    assert seen == [
        b"POST /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Length: 3\r\n"
        b"X-Key: v\r\nA: b\r\n\r\nabc" % port.encode()
    ]
    with pytest.raises(ValueError):
        await pool.request("GET", url + "/", b"", [("X-Bad", "v\r\nInjected: 1")])


# --- connections ---------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(pool, upstream):
    for _ in range(20):
        assert (await chat(pool, upstream))[0] == 200
    assert upstream.stats.total == 20
    assert upstream.stats.connections == 1


async def test_concurrent_requests_never_open_more_than_the_per_host_limit(pool, upstream):
    upstream.configure(latency_ms=20)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, upstream.stats.connections)
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(chat(pool, upstream) for _ in range(64)))
    finally:
        watcher.cancel()
    assert [status for status, _ in results] == [200] * 64
    assert upstream.stats.total == 64
    assert 1 <= most <= 8
    assert upstream.stats.connections <= 8


async def test_waiting_requests_are_served_first_in_first_out(upstream):
    pool = Pool(max_connections_per_host=1)
    upstream.configure(latency_ms=5)
    finished: list[int] = []

    async def one(i: int) -> None:
        await chat(pool, upstream)
        finished.append(i)

    try:
        await asyncio.gather(*(one(i) for i in range(6)))
    finally:
        await pool.close()
    assert finished == list(range(6))


async def test_idle_connections_close_after_the_idle_timeout(upstream):
    pool = Pool(idle_timeout_s=0.2)
    try:
        await chat(pool, upstream)
        assert upstream.stats.connections == 1
        await wait_for(lambda: upstream.stats.connections == 0, what="the idle connection to close")
        assert (await chat(pool, upstream))[0] == 200
    finally:
        await pool.close()


async def test_closing_the_pool_closes_every_connection(upstream):
    pool = Pool()
    upstream.configure(token_interval_ms=50)
    await asyncio.gather(chat(pool, upstream), chat(pool, upstream))
    streaming = await pool.request("POST", upstream.url + CHAT_PATH, STREAM, JSON)
    await pool.close()
    await wait_for(lambda: upstream.stats.connections == 0, what="every connection to close")
    with pytest.raises(ResponseCut):
        await streaming.read()
    with pytest.raises(ConnectFailed):
        await chat(pool, upstream)


async def test_https_with_a_given_ssl_context(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def answer(reader, writer):
        while await read_request(reader):
            writer.write(reply(b"secret"))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    trusting = Pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
    distrusting = Pool()
    try:
        for _ in range(2):
            resp = await trusting.request("GET", url, b"", ())
            assert await resp.read() == b"secret"
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await distrusting.request("GET", url, b"", ())
    finally:
        await trusting.close()
        await distrusting.close()
        server.close()


# --- failures ------------------------------------------------------------------------------------


async def test_refused_connection_raises_connect_failed(pool, upstream):
    upstream.configure(failure_kind="refuse", failure_rate=1.0)
    with pytest.raises(ConnectFailed):
        await chat(pool, upstream)
    upstream.configure(failure_rate=0.0)
    assert (await chat(pool, upstream))[0] == 200


async def test_hanging_upstream_raises_read_timeout(pool, upstream):
    upstream.configure(failure_kind="hang", failure_rate=1.0)
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        await chat(pool, upstream, read_timeout_s=0.2)
    assert 0.19 <= time.monotonic() - started < 1.5
    await wait_for(lambda: upstream.stats.connections == 0, what="the hung connection to close")


async def test_read_timeout_counts_from_the_last_byte_not_from_the_start(pool, upstream):
    upstream.configure(token_interval_ms=60)  # 8 tokens: about half a second in all
    status, body = await chat(pool, upstream, STREAM, read_timeout_s=0.25)
    assert status == 200
    assert body.rstrip().endswith(b"data: [DONE]")


@pytest.mark.parametrize("body", [CHAT, STREAM], ids=["whole", "streamed"])
async def test_reply_cut_short_raises_response_cut(pool, upstream, body):
    upstream.configure(failure_kind="cut", failure_rate=1.0, token_interval_ms=5)
    received = b""
    with pytest.raises(ResponseCut):
        resp = await pool.request("POST", upstream.url + CHAT_PATH, body, JSON)
        async for data in resp:
            received += data
    assert b"[DONE]" not in received
    upstream.configure(failure_rate=0.0)
    assert (await chat(pool, upstream))[0] == 200


async def test_restarted_upstream_is_reached_on_a_fresh_connection(pool):
    first = Simulator(SimConfig(tokens=8))
    port = await first.start()
    assert (await chat(pool, first))[0] == 200
    await first.stop()
    second = Simulator(SimConfig(tokens=8))
    await second.start(port=port)
    try:
        assert (await chat(pool, second))[0] == 200
        assert second.stats.total == 1
    finally:
        await second.stop()


async def test_reused_connection_closed_by_the_server_is_retried_once_on_a_fresh_one(pool):
    async def one_reply_each(reader, writer, _):
        await read_request(reader)
        writer.write(reply(b"ok"))
        await read_request(reader)  # the next request finds the connection closing

    async with raw_server(one_reply_each) as (url, writers):
        for _ in range(3):
            resp = await pool.request("POST", url + "/", b"x", ())
            assert await resp.read() == b"ok"
        assert len(writers) == 3


async def test_fresh_connection_closed_without_a_reply_is_not_retried(pool):
    async def mute(reader, writer, _):
        await read_request(reader)

    async with raw_server(mute) as (url, writers):
        with pytest.raises(ResponseCut):
            await pool.request("POST", url + "/", b"x", ())
        assert len(writers) == 1


async def test_reply_cut_after_its_first_bytes_is_never_retried(pool):
    async def half_head_second_time(reader, writer, _):
        await read_request(reader)
        writer.write(reply(b"ok"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")

    async with raw_server(half_head_second_time) as (url, writers):
        resp = await pool.request("POST", url + "/", b"x", ())
        assert await resp.read() == b"ok"
        with pytest.raises(ResponseCut):
            await pool.request("POST", url + "/", b"x", ())
        assert len(writers) == 1


async def test_malformed_reply_raises_response_cut(pool):
    async def garbage(reader, writer, _):
        await read_request(reader)
        writer.write(b"SPDY/3 200 OK\r\n\r\n")

    async with raw_server(garbage) as (url, _):
        with pytest.raises(ResponseCut, match="status line"):
            await pool.request("GET", url + "/", b"", ())


async def written(writer: asyncio.StreamWriter, data: bytes, piece: int | None) -> None:
    """Write `data` at once, or `piece` bytes at a time, each sent before the next is written."""
    if piece is None:
        writer.write(data)
        await writer.drain()
        return
    for start in range(0, len(data), piece):
        writer.write(data[start : start + piece])
        await writer.drain()
        await asyncio.sleep(0.005)     # a piece per segment, as a server writing its head line by line sends it


@pytest.mark.parametrize("piece", [None, 1, 7])
@pytest.mark.parametrize(("head", "framing"), [
    pytest.param(b"HTTP/1.1 200 OK\nContent-Type: application/json\nContent-Length: 13\nX-Odd: a\n\n", None,
                 id="bare LF"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 13\nX-Odd: a\r\n\n", None, id="mixed"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 13\r\n\r\n", None, id="LF then CRLF"),
    pytest.param(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nX-Odd:\n  folded\n\n", "chunked",
                 id="chunked and folded"),
    pytest.param(b"HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\nContent-Length: 13\n\n", None, id="interim 1xx"),
])
async def test_a_head_whose_lines_end_in_a_bare_lf_is_read(pool, head, framing, piece):
    """RFC 9112 section 2.2 lets a recipient take a bare LF as a line's end; old servers write them. Such a head
    was never found: the call waited out its whole timeout and was called a timeout. (The body holds a CRLF blank
    line, which is not the head's end.)"""
    body = b'{"a": "\r\n\r\n"}'
    wire = body if framing is None else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)

    async def old_server(reader, writer, _):
        while await read_request(reader):
            await written(writer, head + wire, piece)

    async with raw_server(old_server) as (url, writers):
        async with asyncio.timeout(3):
            for _ in range(2):                  # and the connection is kept for the next call
                resp = await pool.request("POST", url + "/", b"x", (), read_timeout_s=30)
                assert resp.status == 200 and await resp.read() == body
                assert "\r" not in "".join(resp.headers.values())
                if b"X-Odd" in head:
                    assert resp.headers["x-odd"] in ("a", "folded")
        assert len(writers) == 1


def head_of(size: int, eol: bytes = b"\r\n") -> bytes:
    """A response head of exactly `size` bytes, its blank line included, padded by one header."""
    start = b"HTTP/1.1 200 OK" + eol + b"Content-Length: 2" + eol + b"X-Pad: "
    return start + b"a" * (size - len(start) - 2 * len(eol)) + eol + eol


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
@pytest.mark.parametrize("piece", [None, 8192])
@pytest.mark.parametrize("over", [0, 1])
async def test_the_head_limit_is_the_same_however_the_head_arrives(pool, eol, piece, over):
    """A head over 64 KiB written in one go was taken, the same head in 8 KB pieces refused."""
    head = head_of(MAX_HEAD_BYTES + over, eol)
    assert len(head) == MAX_HEAD_BYTES + over

    async def big_head(reader, writer, _):
        await read_request(reader)
        await written(writer, head + b"ok", piece)

    async with raw_server(big_head) as (url, _):
        async with asyncio.timeout(3):
            if over:
                with pytest.raises(ResponseCut, match="head is larger than"):
                    await pool.request("POST", url + "/", b"x", ())
            else:
                resp = await pool.request("POST", url + "/", b"x", ())
                assert len(resp.headers["x-pad"]) > 60000 and await resp.read() == b"ok"


# --- giving up on a response ---------------------------------------------------------------------


async def test_release_in_the_middle_of_the_body_closes_the_connection(pool, upstream):
    upstream.configure(token_interval_ms=50)
    resp = await pool.request("POST", upstream.url + CHAT_PATH, STREAM, JSON)
    assert await anext(resp)
    resp.release()
    resp.release()  # idempotent
    await wait_for(lambda: upstream.stats.connections == 0, what="the connection to close")
    upstream.configure(token_interval_ms=0)
    assert (await chat(pool, upstream))[0] == 200


async def test_cancelled_stream_closes_the_connection(pool, upstream):
    upstream.configure(token_interval_ms=50)
    first = asyncio.Event()

    async def relay() -> None:
        resp = await pool.request("POST", upstream.url + CHAT_PATH, STREAM, JSON)
        async for _ in resp:
            first.set()

    task = asyncio.create_task(relay())
    await asyncio.wait_for(first.wait(), 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: upstream.stats.connections == 0, what="the connection to close")


async def test_cancelled_request_waiting_for_the_head_closes_the_connection(pool, upstream):
    upstream.configure(latency_ms=5000)
    task = asyncio.create_task(chat(pool, upstream))
    await wait_for(lambda: upstream.stats.total == 1, what="the request to arrive")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: upstream.stats.connections == 0, what="the connection to close")


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_whole_body_larger_than_the_pause_threshold_is_read_whole(pool, framing):
    """read() takes the body as it arrives: the connection stops reading past PAUSE_ABOVE_BYTES not yet taken, so
    waiting for the end before taking any waited for ever."""
    body = bytes(range(256)) * (12 * 1024)           # 3 MiB

    async def big(reader, writer, _):
        while await read_request(reader):
            if framing == "length":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(body), 50_000):
                    piece = body[i:i + 50_000]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with raw_server(big) as (url, writers):
        for _ in range(2):                           # and the connection is reused after it
            resp = await pool.request("GET", url + "/", b"", ())
            assert await asyncio.wait_for(resp.read(), 10) == body
        assert len(writers) == 1


async def test_a_body_over_the_read_limit_raises_and_closes_the_connection(pool):
    sent = 0

    async def endless(reader, writer, _):
        nonlocal sent
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
                sent += 0x10000
                await writer.drain()

    async with raw_server(endless) as (url, writers):
        resp = await pool.request("GET", url + "/", b"", ())
        with pytest.raises(AnswerTooLarge, match="larger than 1000000 bytes"):
            await asyncio.wait_for(resp.read(limit=1_000_000), 10)
        assert isinstance(AnswerTooLarge("x"), ResponseCut)
        await wait_for(lambda: writers[0].is_closing() or writers[0].transport.is_closing(), 5,
                       what="the server to see the connection closed")
        assert sent < 1_000_000 + 16 * 1024 * 1024


async def test_a_body_trickling_past_the_read_time_raises_and_closes_the_connection(pool):
    """The read timeout bounds the silence between bytes; a body that keeps coming a byte at a time, never silent
    long enough for it, is bounded by read()'s within_s instead."""
    async def trickle(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)

    async with raw_server(trickle) as (url, writers):
        resp = await pool.request("GET", url + "/", b"", (), read_timeout_s=1)
        with pytest.raises(AnswerTooSlow, match="did not all arrive within 0.5 s"):
            await asyncio.wait_for(resp.read(within_s=0.5), 10)
        assert isinstance(AnswerTooSlow("x"), ReadTimeout)
        await wait_for(lambda: writers[0].is_closing() or writers[0].transport.is_closing(), 5,
                       what="the server to see the connection closed")


async def test_a_body_within_its_read_time_is_read_and_the_connection_kept(pool):
    async def slow_but_done(reader, writer, _):
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                writer.write(b"2\r\nab\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with raw_server(slow_but_done) as (url, writers):
        for _ in range(2):
            resp = await pool.request("GET", url + "/", b"", ())
            assert await asyncio.wait_for(resp.read(within_s=5), 10) == b"ababab"
        assert len(writers) == 1


async def test_slow_consumer_pauses_reading_instead_of_buffering_the_body(pool):
    total = 64 * 1024 * 1024  # more than the kernel's socket buffers hold
    finished = asyncio.Event()

    async def flood(reader, writer, _):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total + b"x" * total)
        await writer.drain()
        finished.set()
        while await read_request(reader):
            writer.write(reply(b"ok"))

    async with raw_server(flood) as (url, writers):
        resp = await pool.request("GET", url + "/", b"", ())
        # what the client holds for its consumer (private): past 1 MiB it stops reading
        await wait_for(lambda: resp._size > PAUSE_ABOVE_BYTES, what="the consumer to fall behind")
        window_ends = time.monotonic() + 0.3
        while time.monotonic() < window_ends:
            assert resp._size <= PAUSE_ABOVE_BYTES + 256 * 1024
            await asyncio.sleep(0.01)
        assert not finished.is_set()  # the upstream is held back
        received = 0
        async for data in resp:
            received += len(data)
        assert received == total
        await asyncio.wait_for(finished.wait(), 3)
        resp = await pool.request("GET", url + "/", b"", ())
        assert await resp.read() == b"ok"
        assert len(writers) == 1  # the same connection, reused


# --- the benchmark -------------------------------------------------------------------------------


async def _bench(client: str, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, client CPU µs per request) for `requests` chat calls, `concurrency` at once."""
    left = requests

    if client == "http1":
        pool = Pool(max_connections_per_host=concurrency)

        async def call() -> None:
            resp = await pool.request("POST", url, CHAT, JSON, read_timeout_s=30)
            await resp.read()
            resp.release()
            assert resp.status == 200

        close = pool.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(  # configured as the gateway's aiohttp session was
            connector=aiohttp.TCPConnector(
                limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300,
                keepalive_timeout=60, enable_cleanup_closed=True,
            ),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30)

        async def call() -> None:
            async with session.post(url, data=CHAT, headers=dict(JSON), timeout=timeout) as resp:
                await resp.read()
                assert resp.status == 200

        close = session.close

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    await asyncio.gather(*(call() for _ in range(concurrency)))  # warm: connections open
    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await close()
    return requests / elapsed, cpu / requests * 1e6


def _main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description="http1.Pool vs aiohttp: client CPU per request")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "switchyard_gateway.simulator", "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        base = server.stdout.readline().split(" on ", 1)[1].split()[0]
        for _ in range(args.rounds):
            for client in ("aiohttp", "http1"):
                rate, cpu_us = uvloop.run(
                    _bench(client, base + CHAT_PATH, args.requests, args.concurrency)
                )
                print(f"{client:8} {rate:8,.0f} req/s  {cpu_us:6.1f} µs client CPU/request")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    _main()
