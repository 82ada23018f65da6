"""The simulator's HTTP/1.1 handling seen from a raw socket: pipelining, chunked bodies, 1.0."""

import asyncio
import json

import pytest

from switchyard_gateway.simulator import SimConfig, Simulator

CHAT = json.dumps(
    {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
)


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(tokens=3)) as sim:
        yield sim


@pytest.fixture
async def conn(sim):
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    yield reader, writer
    writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one response framed by Content-Length, chunks or connection close."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return status, headers, body
    return status, headers, await asyncio.wait_for(reader.read(), 3)


def post(path: str, body: str, *extra: str) -> bytes:
    head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra])
    return f"{head}\r\n\r\n{body}".encode()


async def test_pipelined_requests_are_answered_in_order_even_when_delayed(sim, conn):
    reader, writer = conn
    sim.configure(latency_ms=30)
    writer.write(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n" + post("/api/chat", CHAT))
    first = await read_response(reader)
    second = await read_response(reader)
    assert json.loads(first[2]) == {"version": "0.5.7"}
    assert json.loads(second[2])["done"] is True


async def test_chunked_request_body_is_accepted(conn):
    reader, writer = conn
    body = CHAT.encode()
    writer.write(
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (10, body[:10])
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 10, body[10:])
    )
    status, _, reply = await read_response(reader)
    assert status == 200
    assert json.loads(reply)["eval_count"] == 3


async def test_expect_continue_gets_100_before_the_body_is_sent(conn):
    reader, writer = conn
    request = post("/api/chat", CHAT, "Expect: 100-continue")
    head, body = request.split(b"\r\n\r\n", 1)
    writer.write(head + b"\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    assert (await read_response(reader))[0] == 200


async def test_http_10_stream_ends_by_closing_the_connection(conn):
    reader, writer = conn
    body = json.dumps({"model": "llama3.2", "prompt": "hi"})
    writer.write(
        f"POST /api/generate HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    status, headers, reply = await read_response(reader)
    assert status == 200
    assert "transfer-encoding" not in headers
    assert len(reply.splitlines()) == 4  # three tokens and the final object


async def test_connection_close_is_honoured(conn):
    reader, writer = conn
    writer.write(b"GET /api/version HTTP/1.1\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await asyncio.wait_for(reader.read(), 3) == b""


async def test_garbage_gets_400_and_a_closed_connection(conn):
    reader, writer = conn
    writer.write(b"HELLO\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 3) == b""


async def test_head_gets_headers_only_and_the_connection_stays_usable(conn):
    reader, writer = conn
    writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 17" in head
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"Ollama is running")
