"""Our HTTP/1.1 server (libs/http1/server.py) on a real socket, against raw clients that do what browsers, SDKs and
attackers do: keep-alive, pipelining, chunked bodies, bad framing, stalls, hang-ups, WebSockets.

The app here is a small RSGI app written for the test; the server is the one the gateway runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import websockets

from switchyard_gateway.http1 import exchange as http_exchange
from switchyard_gateway.http1 import server as http_server
from switchyard_gateway.http1.server import ClientDisconnected, Server
from tests.conftest import wait_for


class App:
    """Echoes what it was sent; a few paths do what the tests need."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.disconnects = 0
        self.stream_blocked = asyncio.Event()
        self.stream_cut = asyncio.Event()
        self.body_errors: list[str] = []
        self.refused_with: list[int] = []
        self.release = asyncio.Event()
        self.ws_closes: list[object] = []      # the data of each socket's closing message

    async def __rsgi__(self, scope, proto) -> None:
        self.seen.append(scope.path)
        if scope.proto == "ws":
            await self.websocket(scope, proto)
            return
        if scope.path == "/boom":
            raise RuntimeError("the app failed")
        if scope.path == "/silent":
            return
        if scope.path == "/inject":
            proto.response_bytes(200, [("x-a", "1\r\nset-cookie: evil=1")], b"no")
            return
        if scope.path == "/unread":             # answers without reading the body
            proto.response_bytes(401, [("content-type", "application/json")], b'{"error":"no key"}')
            return
        if scope.path in ("/status/204", "/status/304"):
            proto.response_empty(int(scope.path[-3:]), [("etag", '"v1"')])
            return
        if scope.path == "/too-large":          # refused for its size, then read on and dropped, as the gateway does
            proto.response_bytes(413, [("content-type", "application/json")], b'{"error":"too large"}')
            try:
                async for _ in proto:
                    pass
            except ClientDisconnected as exc:
                self.body_errors.append(str(exc))
            return
        if scope.path == "/stream":
            transport = proto.response_stream(200, [("content-type", "text/event-stream")])
            for number in range(3):
                await transport.send_bytes(b"data: %d\n\n" % number)
            return
        if scope.path == "/stream-fails":
            transport = proto.response_stream(200, [("content-type", "text/event-stream")])
            await transport.send_bytes(b"data: 0\n\n")
            raise RuntimeError("the app failed mid-stream")
        if scope.path == "/flood":              # a stream to a client that does not read
            transport = proto.response_stream(200, [])
            try:
                for _ in range(10_000):
                    await asyncio.wait_for(transport.send_bytes(b"x" * 65536), 2)
            except TimeoutError:
                self.stream_blocked.set()
            return
        if scope.path == "/endless":            # a stream until the client is gone
            transport = proto.response_stream(200, [])
            try:
                while True:
                    await transport.send_bytes(b"y" * 65536)
            except ClientDisconnected:
                self.stream_cut.set()
            return
        if scope.path == "/paced":              # 512 KB streamed in 64 KB chunks
            transport = proto.response_stream(200, [])
            for _ in range(8):
                await transport.send_bytes(b"p" * 65536)
            return
        if scope.path == "/huge":               # an answer larger than the socket buffers hold
            proto.response_bytes(200, [("content-type", "text/plain")], b"h" * 16_000_000)
            return
        if scope.path == "/big":                # a large answer, for pipelines nobody reads
            proto.response_bytes(200, [("content-type", "text/plain")], b"z" * 200_000)
            return
        if scope.path == "/watch":
            await proto.client_disconnect()
            self.disconnects += 1
            return
        if scope.path == "/slow":
            await self.release.wait()
        try:
            body = await proto()
        except ClientDisconnected as exc:
            self.body_errors.append(str(exc))
            self.refused_with.append(getattr(exc, "status", 0))     # BodyRefused: the status the client got
            return
        answer = {"method": scope.method, "path": scope.path, "query": scope.query_string, "body": body.decode(),
                  "x": scope.headers.get_all("x-a"), "version": scope.http_version}
        proto.response_bytes(200, [("content-type", "application/json")], json.dumps(answer).encode())

    @staticmethod
    def error_body(path: str, status: int, message: str) -> bytes:
        """The error shape of a refusal: the path says which door's shape the gateway would use."""
        return json.dumps({"error": {"message": message, "path": path}}).encode()

    async def websocket(self, scope, proto) -> None:
        if scope.path == "/ws-refuse":
            proto.close(403)
            return
        transport = await proto.accept()
        while True:
            message = await transport.receive()
            if message.kind == 0:
                self.ws_closes.append(message.data)
                return
            if message.kind == 2 and message.data == "bye":
                proto.close(4401)
                return
            if message.kind == 2 and message.data == "why":
                proto.close_frame(4401, "é" * 70)             # 140 bytes: more than a close frame holds
                return
            if message.kind == 1:
                await transport.send_bytes(message.data)
            else:
                await transport.send_str(message.data.upper())


@contextlib.asynccontextmanager
async def serving(app, **options) -> AsyncIterator[tuple[Server, int]]:
    """`app` served by our server on a loopback port (Server's `options`), stopped at the end."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    server = Server(app, asyncio.get_running_loop(), **options)
    task = asyncio.create_task(server.serve(sock))
    try:
        yield server, sock.getsockname()[1]
    finally:
        server.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def served():
    app = App()
    async with serving(app, grace_s=3.0) as (server, port):
        yield app, server, port


async def exchange(port: int, raw: bytes, read_until_close: bool = True, timeout_s: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), timeout_s)
        return await asyncio.wait_for(reader.read(65536), timeout_s)
    finally:
        writer.close()


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream of Content-Length framed responses."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return out


WS_UPGRADE = (b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n{extra}\r\n").encode() + body


async def test_keep_alive_and_pipelining_answer_in_order(served) -> None:
    _, _, port = served
    raw = post("/a", b"one") + post("/b?q=1", b"two", "x-a: 1\r\nx-a: 2\r\n") + \
        b"GET /c%20d HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    got = responses(await exchange(port, raw))
    assert [status for status, _, _ in got] == [200, 200, 200]
    bodies = [json.loads(body) for _, _, body in got]
    assert [b["path"] for b in bodies] == ["/a", "/b", "/c d"]
    assert [b["body"] for b in bodies] == ["one", "two", ""]
    assert bodies[1]["query"] == "q=1" and bodies[1]["x"] == ["1", "2"]
    assert got[2][1]["connection"] == "close" and "date" in got[0][1]


async def test_a_path_in_raw_utf8_or_percent_encoded_reads_the_same(served) -> None:
    _, _, port = served
    raw = "GET /models/café HTTP/1.1\r\nhost: x\r\n\r\n".encode() + \
        b"GET /models/caf%C3%A9?q=%20 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    got = [json.loads(body) for _, _, body in responses(await exchange(port, raw))]
    assert [answer["path"] for answer in got] == ["/models/café", "/models/café"] and got[1]["query"] == "q=%20"


async def test_http10_closes_unless_asked_to_keep_alive(served) -> None:
    _, _, port = served
    got = responses(await exchange(port, b"POST /x HTTP/1.0\r\ncontent-length: 2\r\n\r\nhi"))
    assert got[0][0] == 200 and json.loads(got[0][2])["version"] == "1.0"
    kept = await exchange(port, b"POST /x HTTP/1.0\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi",
                          read_until_close=False)
    assert b"connection: keep-alive" in kept


async def test_a_request_written_a_byte_at_a_time_is_read_whole(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = post("/bytes", b"abc", "x-a: " + "z" * 3000 + "\r\nconnection: close\r\n")
    for offset in range(len(raw)):
        writer.write(raw[offset:offset + 1])
        if offset % 64 == 0:
            await writer.drain()
            await asyncio.sleep(0)
    got = responses(await asyncio.wait_for(reader.read(), 10))
    assert got[0][0] == 200 and json.loads(got[0][2])["body"] == "abc"
    writer.close()


async def test_a_websocket_message_in_many_small_writes_arrives_whole(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(WS_UPGRADE)
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    payload = b"w" * 300_000
    frame = _masked(0x82, payload)
    for offset in range(0, len(frame), 1000):
        writer.write(frame[offset:offset + 1000])
        await writer.drain()
    head = await asyncio.wait_for(reader.readexactly(10), 10)
    assert head[0] == 0x82 and struct.unpack("!Q", head[2:10])[0] == len(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
    writer.close()


async def test_chunked_body_is_joined(served) -> None:
    _, _, port = served
    raw = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n" \
          b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n"
    got = responses(await exchange(port, raw))
    assert json.loads(got[0][2])["body"] == "abcdefg"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: x\r\nname : space before colon\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999999\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET nowhere HTTP/1.1\r\nhost: x\r\n\r\n", 400),
    # read otherwise by a proxy in front, each would be a way to smuggle a request past it
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: ch unked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: x\r\nx-a: nul\x00byte\r\n\r\n", 400),
    # lines ended by a bare LF: refused at once, not left to the head's 30 s timer
    (b"GET / HTTP/1.1\nhost: x\n\n", 400),
    (b"GET / HTTP/1.1\r\nhost: x\n\r\n", 400),
    # RFC 9112 3.2: a Host that is no host (the framework behind refused it on some routes only, as a body error)
    (b"GET / HTTP/1.1\r\nhost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: [::1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                 # and an HTTP/1.1 request names one (HTTP/1.0 need not)
])
async def test_bad_framing_is_refused_and_closed(served, raw: bytes, status: int) -> None:
    _, _, port = served
    got = await exchange(port, raw)
    assert got.startswith(b"HTTP/1.1 %d " % status), got[:80]
    answer = responses(got)[0]
    message = json.loads(answer[2])["error"]["message"]
    assert answer[1]["connection"] == "close" and message
    assert (message == "missing Host") == (b"HTTP/1.1" in raw and b"host" not in raw.lower()), message


CHUNKED_POST = b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.mark.parametrize("body", [
    # a chunk extension ended by a bare LF: read by a proxy in front that ends lines at LF, the 0x45 bytes after it
    # are a chunk here and a last chunk plus a second request there
    b"2;\nxx\r\n45\r\n0\r\n\r\n" + SMUGGLED + b"X" * (0x45 - 5 - len(SMUGGLED)) + b"\r\n0\r\n\r\n",
    b"2;\x00\r\nxx\r\n0\r\n\r\n",                              # control bytes in an extension
    b"2;a\rb\r\nxx\r\n0\r\n\r\n",
    b"2;\x7f\x01\r\nxx\r\n0\r\n\r\n",
    b"2;\r\nxx\r\n0\r\n\r\n",                                  # `;` with no extension name
    b"2;a=\"open\r\nxx\r\n0\r\n\r\n",                          # an unterminated quoted-string
    b"2\r\nxx\r\n0\r\nX: y\n\r\n" + SMUGGLED,                    # a trailer ended by a bare LF swallowed a request
    b"2\r\nxx\r\n0\r\nnot a field line\r\n\r\n",
    b"2\r\nxx\r\n0\r\nx: \x00\x01\r\n\r\n",
])
async def test_chunk_extensions_and_trailers_rfc_9112_forbids_are_refused(served, body: bytes) -> None:
    """RFC 9112 7.1.1 and 7.1.2: an extension is `;` and a token, with a token or quoted-string value; a trailer is a
    field line ended by CRLF. Anything else (a bare LF, a control byte) is read differently by some other server
    on the way: refused, and nothing after it is read as a request."""
    app, _, port = served
    got = await exchange(port, CHUNKED_POST + body)
    assert [answer[0] for answer in responses(got)] == [400], got[:200]
    assert "/smuggled" not in app.seen


async def test_chunk_extensions_and_trailers_rfc_9112_allows_are_read(served) -> None:
    _, _, port = served
    got = await exchange(port, CHUNKED_POST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n") +
                         b'3 ; a = b ; c ; d="q \\" \xe9"\r\nabc\r\n1;x\r\nd\r\n0\r\nx-sum: 1\r\nx-b:\r\n\r\n')
    assert json.loads(responses(got)[0][2])["body"] == "abcd"


async def test_the_app_reading_a_body_refused_as_malformed_hears_it_at_once(served) -> None:
    """The client was answered 400 at once, but the app waiting for the body was never told, and waited out the
    body timeout (60 s) holding its task."""
    app, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CHUNKED_POST + b"3\r\nabc\r\n")
    await writer.drain()
    await wait_for(lambda: "/c" in app.seen, timeout_s=5)
    writer.write(b"zz\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
    await wait_for(lambda: app.body_errors, timeout_s=2)
    assert app.refused_with == [400]        # told what the client was answered (its metrics said 408, a timeout)
    writer.close()


async def test_a_body_in_too_many_chunks_is_refused(served) -> None:
    """Each chunk costs a parse: 30 MB of 1-byte chunks took 4.3 s of a worker's CPU, before any key was read."""
    _, server, port = served
    got = await exchange(port, CHUNKED_POST + b"1\r\nx\r\n" * (server.max_body_chunks + 1) + b"0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 ") and b"chunks" in got


async def test_a_body_refused_for_its_size_is_read_on_only_up_to_the_chunk_bound(served) -> None:
    app, server, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(CHUNKED_POST.replace(b"/c", b"/too-large"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413 ")
    try:
        for _ in range(server.max_body_chunks // 1000 + 2):     # the client goes on sending, and is cut off
            writer.write(b"1\r\nx\r\n" * 1000)
            await writer.drain()
    except ConnectionError:
        pass
    await wait_for(lambda: app.body_errors, timeout_s=5)
    assert await asyncio.wait_for(reader.read(), 5) == b'{"error":"too large"}'
    writer.close()


async def test_100_continue_is_never_sent_after_the_answer_nor_to_http10(served) -> None:
    """RFC 9110 10.1.1 and 15.2: an interim answer after the final one, or to an HTTP/1.0 client, reads as the next
    response's head."""
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /too-large HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b'{"error":"too large"}'), 5)
    writer.write(b"body")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    got = await exchange(port, b"POST /e HTTP/1.0\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
                               b"body")
    assert got.startswith(b"HTTP/1.0 200 ") and b"100 Continue" not in got


@pytest.mark.parametrize("target", [b"/x?a=\xff", b"/x?name=\xe2\x82\xac", b"/\xff"])
async def test_a_request_target_that_is_not_ascii_is_400(served, target: bytes) -> None:
    """RFC 9112 3.2: a request-target is ASCII. A raw byte in the query reached the app replaced by U+FFFD, and the
    gateway's bridge failed on it (500, a traceback); a raw UTF-8 path is still read as its text."""
    app, _, port = served
    got = await exchange(port, b"GET " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 ") and not app.seen


@pytest.mark.parametrize("head", [
    b"POST /v1/messages HTTP/1.1\r\nbad header\r\n\r\n",
    b"POST /v1/messages?x=1 HTTP/1.1\r\nx-a: nul\x00byte\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nx-big: " + b"a" * (http_server.MAX_HEAD_BYTES + 10),
    b"POST /v1/messages HTTP/1.1\r\nx-big: " + b"a" * (http_server.MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
    b"POST /v1/messages HTTP/1.1\r\nhost: exa\x01mple\r\n\r\n",
], ids=["bad-line", "nul", "431-unended", "431-ended", "bad-host"])
async def test_a_refused_head_is_answered_in_the_shape_of_its_path(served, head: bytes) -> None:
    """Anthropic's door answers errors in its own shape: a refusal of the headers, after the path was read, said
    `{"error": ...}` in OpenAI's."""
    _, _, port = served
    got = await exchange(port, post("/a", b"one") + head)
    answers = responses(got)
    assert answers[0][0] == 200 and answers[1][0] in (400, 431)
    assert json.loads(answers[1][2])["error"]["path"] == "/v1/messages"


async def test_repeated_connection_lines_are_read_as_one_list(served) -> None:
    """RFC 9110 5.3: `Connection: keep-alive` then `Connection: close` is `keep-alive, close`; the first line
    alone kept the connection open, or missed an Upgrade."""
    _, _, port = served
    got = await exchange(port, b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\nconnection: close\r\n\r\n")
    assert responses(got)[0][1]["connection"] == "close"
    upgrade = WS_UPGRADE.replace(b"connection: Upgrade\r\n", b"connection: keep-alive\r\nconnection: Upgrade\r\n")
    assert (await exchange(port, upgrade, read_until_close=False)).startswith(b"HTTP/1.1 101 ")


async def test_a_head_begun_behind_a_pipelined_request_has_the_head_timeout() -> None:
    app = App()
    async with serving(app, head_timeout_s=0.3, keep_alive_s=60) as (_, port):
        got = await exchange(port, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nho", timeout_s=10)
    assert [answer[0] for answer in responses(got)] == [200, 408]


async def test_blank_lines_between_requests_split_inside_a_crlf_are_skipped(served) -> None:
    """A read that ends between the CR and the LF of a blank line: the CR was dropped as blank, and the LF that
    began the next read made the next head one with a bare LF (refused 400)."""
    _, server, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\r")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
    conn = next(iter(server.connections))
    writer.write(b"\n\r\nGET /b HTTP/1.1\r\nho")
    await wait_for(lambda: conn.head_started or conn.lost, timeout_s=5)
    writer.write(b"st: x\r\nconnection: close\r\n\r\n")
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert [answer[0] for answer in responses(got)] == [200]


async def test_204_and_304_say_no_length_and_head_of_a_stream_sends_no_body(served) -> None:
    """RFC 9110 8.6: a 204 has no Content-Length, and a 304's may only be the 200's (`0` is not it); HEAD gets the
    head a GET would, and no body: a streamed one was sent, and read as the next answer."""
    _, _, port = served
    got = await exchange(port, b"GET /status/204 HTTP/1.1\r\nhost: x\r\n\r\nGET /status/304 HTTP/1.1\r\nhost: x\r\n\r\n"
                               b"HEAD /stream HTTP/1.1\r\nhost: x\r\n\r\nGET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    answers = responses(got)
    assert [answer[0] for answer in answers] == [204, 304, 200, 200]
    assert "content-length" not in answers[0][1] and "content-length" not in answers[1][1]
    assert answers[2][1]["transfer-encoding"] == "chunked" and json.loads(answers[3][2])["path"] == "/a"


async def test_a_client_that_ends_its_side_is_taken_as_gone(served) -> None:
    """A client that ends its side after its request (an SDK that timed out and closed; `shutdown(SHUT_WR)` alike)
    is taken as gone, as nginx takes it: its connection closes and the call in flight sees its client leave, so no
    answer nobody reads is billed."""
    app, server, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    await wait_for(lambda: "/slow" in app.seen, timeout_s=5)
    conn = next(iter(server.connections))
    writer.write_eof()
    await wait_for(lambda: conn.lost, timeout_s=5)
    app.release.set()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_head_over_the_limit_is_431(served) -> None:
    _, _, port = served
    got = await exchange(port, b"GET / HTTP/1.1\r\nx-big: " + b"a" * (http_server.MAX_HEAD_BYTES + 10))
    assert got.startswith(b"HTTP/1.1 431 ")


async def test_expect_continue_is_sent_when_the_app_reads(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /e HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def test_an_answer_before_the_body_is_read_closes_the_connection(served) -> None:
    _, _, port = served
    got = await exchange(port, b"POST /unread HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\npartial")
    status, headers, _ = responses(got)[0]
    assert status == 401 and headers["connection"] == "close"


async def test_a_stream_is_chunked_and_ended(served) -> None:
    _, _, port = served
    got = await exchange(port, b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    old = await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")
    assert old.partition(b"\r\n\r\n")[2] == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_a_stream_the_app_fails_is_cut_not_ended(served) -> None:
    _, _, port = served
    got = await exchange(port, b"GET /stream-fails HTTP/1.1\r\nhost: x\r\n\r\n")     # read until the server closes
    assert got.partition(b"\r\n\r\n")[2] == b"9\r\ndata: 0\n\n\r\n"                    # no last chunk after it


async def test_a_client_that_does_not_read_holds_the_stream_back(served) -> None:
    app, _, port = served
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET /flood HTTP/1.1\r\nhost: x\r\n\r\n")
    try:
        await asyncio.wait_for(app.stream_blocked.wait(), 15)     # send_bytes waited: the server did not buffer on
    finally:
        sock.close()


def _not_reading(port: int) -> socket.socket:
    """A client connection with a small receive buffer, for a client that stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


async def test_a_stream_whose_client_stops_reading_is_cut_after_the_send_timeout() -> None:
    """A client that started a streamed answer and stopped reading held the request's task, its upstream
    connection and megabytes of unsent answer for as long as it kept the connection open (540 s in a probe).
    With no byte read for `send_timeout_s` the connection is dropped and the app's send fails."""
    app = App()
    async with serving(app, send_timeout_s=0.5) as (server, port):
        sock = _not_reading(port)
        try:
            sock.sendall(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
            await asyncio.wait_for(app.stream_cut.wait(), 10)
            await wait_for(lambda: not server.connections, timeout_s=5)
        finally:
            sock.close()


async def test_an_answer_left_unread_on_a_kept_alive_connection_is_dropped_after_the_send_timeout() -> None:
    """A whole answer written and never read: the connection, idle between requests, was closed at its keep-alive
    timeout by a close that waited for the client to read, that is for ever, holding the answer in memory."""
    app = App()
    async with serving(app, send_timeout_s=0.5, keep_alive_s=0.5) as (server, port):
        sock = _not_reading(port)
        try:
            sock.sendall(b"GET /huge HTTP/1.1\r\nhost: x\r\n\r\n")
            await wait_for(lambda: app.seen == ["/huge"], timeout_s=5)
            await wait_for(lambda: not server.connections, timeout_s=10)
        finally:
            sock.close()


async def test_a_client_reading_slowly_but_steadily_gets_the_whole_stream() -> None:
    app = App()
    async with serving(app, send_timeout_s=0.5) as (_, port):
        sock = _not_reading(port)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"GET /paced HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        received = b""
        try:
            while True:
                await asyncio.sleep(0.05)       # the pace of a slow reader: a few KB every 50 ms
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                if not chunk:
                    break
                received += chunk
        finally:
            sock.close()
        assert received.endswith(b"0\r\n\r\n") and received.count(b"p") == 8 * 65536


async def test_the_app_failing_or_silent_is_a_500(served) -> None:
    _, _, port = served
    for path in (b"/boom", b"/silent", b"/inject"):
        got = await exchange(port, b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 500 "), (path, got[:60])
        assert b"evil" not in got


async def test_client_disconnect_completes_when_the_client_leaves(served) -> None:
    app, _, port = served
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /watch HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    await wait_for(lambda: "/watch" in app.seen, what="the request reached the app")
    writer.close()
    await wait_for(lambda: app.disconnects == 1, what="client_disconnect completed")


async def test_a_body_that_stops_coming_fails_the_read(served, monkeypatch) -> None:
    app, _, port = served
    monkeypatch.setattr(served[1], "body_timeout_s", 0.3)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    await wait_for(lambda: app.body_errors, what="the body read failed")
    assert "in time" in app.body_errors[0]
    writer.close()
    _, writer2 = await asyncio.open_connection("127.0.0.1", port)
    writer2.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    await writer2.drain()
    await wait_for(lambda: len(app.seen) >= 2, what="the second request reached the app")
    writer2.close()                              # a client that hangs up mid-body: the read fails at once
    await wait_for(lambda: len(app.body_errors) == 2, what="the hang-up failed the read")


async def test_a_body_trickled_a_byte_at_a_time_runs_out_of_time_on_the_whole(served, monkeypatch) -> None:
    """One byte every half minute met the per-byte timeout for ever, holding a connection and a task: the whole
    body now has `body_timeout_s` and a second per BODY_MIN_RATE bytes."""
    app, server, port = served
    monkeypatch.setattr(server, "body_timeout_s", 0.5)
    monkeypatch.setattr(http_exchange, "BODY_MIN_RATE", 100)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
    started = asyncio.get_running_loop().time()
    try:
        while not app.body_errors and asyncio.get_running_loop().time() - started < 10:
            writer.write(b"a")                         # well within the per-byte 0.5 s, far below 100 bytes/s
            await writer.drain()
            await asyncio.sleep(0.2)
        assert app.body_errors and "too slowly" in app.body_errors[0], app.body_errors
        assert asyncio.get_running_loop().time() - started < 3
    finally:
        writer.close()


async def test_blank_lines_before_a_request_are_skipped(served) -> None:
    got = await exchange(served[2], b"\r\n\r\n\r\nGET /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 "), got[:80]


async def test_a_bare_lf_head_arriving_a_byte_at_a_time_is_refused_at_its_end(served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", served[2])
    for byte in b"GET / HTTP/1.1\nhost: x\n\n":
        writer.write(bytes([byte]))
        await writer.drain()
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 400 ")
    writer.close()


async def test_a_head_that_never_ends_is_408(served, monkeypatch) -> None:
    _, _, port = served
    monkeypatch.setattr(served[1], "head_timeout_s", 0.3)
    got = await exchange(port, b"GET / HTTP/1.1\r\nx-slow: ")
    assert got.startswith(b"HTTP/1.1 408 ")


async def test_an_idle_connection_is_closed(served, monkeypatch) -> None:
    _, _, port = served
    monkeypatch.setattr(served[1], "keep_alive_s", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_stop_finishes_requests_in_flight_and_refuses_new_ones(served) -> None:
    app, server, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/slow", b"x"))
    await writer.drain()
    await wait_for(lambda: "/slow" in app.seen, what="the slow request reached the app")
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    server.stop()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""          # idle: closed at once
    app.release.set()
    got = await asyncio.wait_for(reader.read(), 5)                      # in flight: answered, then closed
    assert got.startswith(b"HTTP/1.1 200 ") and b"connection: close" in got
    await wait_for(lambda: not server.connections, what="every connection closed")
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
    writer.close()
    idle_writer.close()


async def test_websocket_messages_pings_and_close_codes(served) -> None:
    _, _, port = served
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
        await ws.send(["frag", "mented"])                  # a fragmented message arrives whole
        assert await ws.recv() == "FRAGMENTED"
        await asyncio.wait_for(await ws.ping(), 5)          # answered by the server itself
        big = "y" * 200_000
        await ws.send(big)
        assert await ws.recv() == big.upper()
        await ws.send("bye")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_websocket_refused_before_accept_gets_the_http_status(served) -> None:
    _, _, port = served
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws-refuse"):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(("handshake", "status"), [
    (WS_UPGRADE.replace(b"version: 13", b"version: 8"), 426),
    (WS_UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"abc"), 400),
    (WS_UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"!" * 24), 400),
    (WS_UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"eHh4eHh4eHh4eHh4eHh4"), 400),      # base64 of 15 bytes
    (WS_UPGRADE.replace(b"sec-websocket-version: 13\r\n", b""), 400),
    (WS_UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
    (WS_UPGRADE.replace(b"\r\n\r\n", b"\r\ncontent-length: 5\r\n\r\nhello"), 400),
    (WS_UPGRADE.replace(b"\r\n\r\n", b"\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
], ids=["version-8", "short-key", "key-not-base64", "key-15-bytes", "no-version", "http10", "body", "chunked"])
async def test_a_websocket_handshake_rfc_6455_refuses_is_answered_with_the_version_it_speaks(
        served, handshake: bytes, status: int) -> None:
    """RFC 6455 4.2.2: an unsupported version is 426, a malformed handshake 400, each naming version 13. The answer
    was a 400 with no body nor version (and a logged traceback per attempt, from the app's `accept`)."""
    app, _, port = served
    got = await exchange(port, handshake)
    answer = responses(got)[0]
    assert answer[0] == status and answer[1]["sec-websocket-version"] == "13"
    assert json.loads(answer[2])["error"]["message"] and "/ws" not in app.seen


async def test_a_websocket_failed_for_a_protocol_breach_tells_the_app_its_close_code(served) -> None:
    """The app heard a protocol failure (1002, 1007, 1009) as the client's own close, and counted it as 1000."""
    app, _, port = served
    sock, rest = await asyncio.to_thread(_ws_open, port)
    try:
        await asyncio.to_thread(sock.sendall, b"\x81\x02hi")        # unmasked
        assert await asyncio.to_thread(_close_code, sock, rest) == 1002
    finally:
        sock.close()
    await wait_for(lambda: app.ws_closes, timeout_s=5)
    assert app.ws_closes == [1002]


async def test_a_websocket_whose_client_stops_reading_is_dropped_after_the_send_timeout() -> None:
    """Echoes to a client that reads nothing: the app's send waited for ever, and the socket outlived every idle
    timeout of the app (which cannot run while its send waits)."""
    app = App()
    async with serving(app, send_timeout_s=0.5) as (server, port):
        sock, _ = await asyncio.to_thread(_ws_open, port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            message = _masked(0x82, b"e" * 1_000_000)
            with contextlib.suppress(TimeoutError, ConnectionError):
                for _ in range(64):                                 # until the server stops reading, or drops us
                    await asyncio.wait_for(loop.sock_sendall(sock, message), 2)
            await wait_for(lambda: not server.connections, timeout_s=10)
        finally:
            sock.close()


async def test_an_unmasked_websocket_frame_closes_with_1002(served) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(WS_UPGRADE)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    writer.write(b"\x81\x02hi")                              # a text frame without a mask
    frame = await asyncio.wait_for(reader.read(), 5)
    assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1002
    writer.close()


async def test_pipelined_requests_from_a_client_that_reads_nothing_wait_for_it(served) -> None:
    """3,000 pipelined requests for 166 KB answers, nothing read: each answer went onto the unsent pile (a
    gateway worker grew by 470 MB for 117 KB of requests, no key needed). The next request now waits until
    the client reads; reading, it gets every answer."""
    app, _, port = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    count = 300
    await asyncio.get_running_loop().sock_sendall(sock, b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n" * count)
    await asyncio.sleep(1.0)
    started = app.seen.count("/big")
    assert started < 40, f"{started} answers of 200 KB piled up for a client that reads nothing"
    received = 0
    loop = asyncio.get_running_loop()
    while received < count * 200_000:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
        assert chunk, "the connection closed before every answer"
        received += len(chunk)
    sock.close()
    assert app.seen.count("/big") == count


def _ws_open(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(WS_UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock, head.split(b"\r\n\r\n", 1)[1]


def _masked(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    length = len(payload)
    size = bytes((0x80 | length,)) if length < 126 else struct.pack("!BH", 0x80 | 126, length) if length < 65536 \
        else struct.pack("!BQ", 0x80 | 127, length)
    return bytes((first,)) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _close_code(sock: socket.socket, already: bytes) -> int:
    return _closing(sock, already)[0]


def _closing(sock: socket.socket, already: bytes, timeout_s: float = 5.0) -> tuple[int, str]:
    """The code and reason of the close frame the server sends (it sends nothing else in these tests)."""
    data = already
    sock.settimeout(timeout_s)
    while True:
        at = data.find(b"\x88")
        if at >= 0 and len(data) >= at + 2 and len(data) >= at + 2 + data[at + 1]:
            payload = data[at + 2:at + 2 + data[at + 1]]
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed without a close frame: {data[:40]!r}")
        data += chunk


@pytest.mark.parametrize(("frames", "code"), [
    ([_masked(0x89, b"p" * 126)], 1002),                       # a ping over 125 bytes
    ([_masked(0x09, b"p")], 1002),                             # a fragmented ping
    ([_masked(0xC1, b"hi")], 1002),                            # RSV1 without an extension
    ([_masked(0x88, b"\x03")], 1002),                          # a close payload of one byte
    ([_masked(0x88, struct.pack("!H", 1005))], 1002),          # a code no endpoint may send
    ([_masked(0x01, b"a"), *[_masked(0x00, b"") for _ in range(5000)]], 1009),   # fragments without end
])
async def test_websocket_frames_rfc_6455_forbids_close_with_the_code_it_names(served, frames: list[bytes],
                                                                            code: int) -> None:
    _, _, port = served
    sock, rest = await asyncio.to_thread(_ws_open, port)
    try:
        await asyncio.to_thread(sock.sendall, b"".join(frames))
        assert await asyncio.to_thread(_close_code, sock, rest) == code
    finally:
        sock.close()


async def test_pings_from_a_client_that_reads_nothing_stop_being_read(served) -> None:
    """Each ping was answered at once whether or not the client read its pongs: 400 MB of pings grew the worker
    by 420 MB. A socket whose answers are not read is no longer read either."""
    _, server, port = served
    sock, _ = await asyncio.to_thread(_ws_open, port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    ping = _masked(0x89, b"p" * 125)
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        while sent < 200_000 * len(ping):                         # 26 MB of pings, if all were read
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, ping * 1000), 2)
            except TimeoutError:
                break                                             # the server stopped reading: backpressure
            sent += 1000 * len(ping)
        assert sent < 200_000 * len(ping), "every ping was read though no pong was"
        conn = next(iter(server.connections))
        assert conn.reading_paused
    finally:
        sock.close()


def _header(first: int, length: int) -> bytes:
    """A masked client frame's header (mask included) announcing `length` bytes of payload."""
    size = bytes((0x80 | length,)) if length < 126 else struct.pack("!BH", 0x80 | 126, length) if length < 65536 \
        else struct.pack("!BQ", 0x80 | 127, length)
    return bytes((first,)) + size + b"\x01\x02\x03\x04"


class LimitedApp(App):
    max_body_bytes = 1000                       # the app's body limit: a WebSocket message's too


@pytest.mark.parametrize("frames", [
    [_header(0x81, 2000)],                                     # one frame that says it is too large
    [_masked(0x01, b"a" * 600), _header(0x80, 600)],           # a continuation that would make the message so
], ids=["frame", "continuation"])
async def test_a_websocket_message_over_the_apps_body_limit_is_refused_by_its_frame_header(frames) -> None:
    """Messages of 16 MiB were read whole (and buffered: 14 MiB partial frames held until the idle timeout) though
    the app's bodies are limited to 4 MiB. The limit is the app's now, and a frame's header says enough."""
    app = LimitedApp()
    async with serving(app) as (_, port):
        sock, rest = await asyncio.to_thread(_ws_open, port)
        try:
            await asyncio.to_thread(sock.sendall, b"".join(frames))        # no payload follows the last header
            code, reason = await asyncio.to_thread(_closing, sock, rest)
        finally:
            sock.close()
        assert (code, reason) == (1009, "a message over the 1000-byte limit")
        await wait_for(lambda: app.ws_closes, timeout_s=5)
        assert app.ws_closes == [1009]


async def test_a_websocket_message_trickled_in_is_closed_at_its_deadline() -> None:
    """A partial frame fed a byte at a time was held until the app's idle timeout (120 s at the gateway); a message
    now has `ws_message_timeout_s` from its first byte to be whole."""
    app = App()
    async with serving(app, ws_message_timeout_s=0.5) as (_, port):
        sock, rest = await asyncio.to_thread(_ws_open, port)
        try:
            await asyncio.to_thread(sock.sendall, _header(0x81, 100) + b"x" * 10)

            def trickle() -> tuple[int, str]:
                data = rest
                sock.settimeout(0.1)
                for _ in range(40):                                   # a byte every 0.1 s, until the close: 4 s
                    with contextlib.suppress(TimeoutError):
                        data += sock.recv(65536)
                    if b"\x88" in data:
                        break
                    sock.send(b"x")
                return _closing(sock, data)

            code, reason = await asyncio.to_thread(trickle)
        finally:
            sock.close()
        assert (code, reason) == (1008, "a message not whole 0.5 s after its first byte")


async def test_close_frames_say_why(served) -> None:
    """The app's close frames carried a code and no reason; a continuation frame with no message before it was an
    "unknown opcode"."""
    _, _, port = served
    sock, rest = await asyncio.to_thread(_ws_open, port)
    try:
        await asyncio.to_thread(sock.sendall, _masked(0x80, b"x"))
        assert await asyncio.to_thread(_closing, sock, rest) == (1002, "a continuation frame with no message begun")
    finally:
        sock.close()
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await ws.send("why")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == \
        (4401, "é" * 61), "a reason cut to 123 bytes at a character's edge"
