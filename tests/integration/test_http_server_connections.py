"""Our HTTP server (libs/http1/server.py) at its connection limit, against clients that open connections and hold
them: without a limit they take every open file the process may have, and then neither new clients nor the
process's own upstream connections get one.

At the limit one more connection closes the connection idle longest (between requests, or still sending a head),
and only when every connection has a request in flight is the new one answered 503.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys

import pytest

from switchyard_gateway.http1.server import MAX_CONNECTIONS, default_max_connections
from tests.conftest import wait_for
from tests.integration.test_http_server import serving

LIMIT = 3


class App:
    """Answers with its path; `/slow` waits until released, so that its connection is busy."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.shed: list[str] = []
        self.busy = 0

    async def __rsgi__(self, scope, proto) -> None:
        if scope.path == "/slow":
            self.busy += 1
            await self.release.wait()
        await proto()
        proto.response_bytes(200, [("content-type", "application/json")], json.dumps({"path": scope.path}).encode())

    @staticmethod
    def error_body(path: str, status: int, message: str) -> bytes:
        return json.dumps({"error": {"message": message, "status": status}}).encode()

    def connection_shed(self, how: str) -> None:
        self.shed.append(how)


@pytest.fixture
async def served():
    app = App()
    async with serving(app, grace_s=1.0, max_connections=LIMIT) as (server, port):
        try:
            yield app, server, port
        finally:
            app.release.set()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return int(head.split(b" ")[1]), await asyncio.wait_for(reader.readexactly(length), 10)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 10) == b""
    except ConnectionResetError:
        return True


async def test_one_connection_over_the_limit_closes_the_longest_idle_and_is_served(served) -> None:
    app, server, port = served
    held = [await _open(port) for _ in range(LIMIT)]
    await wait_for(lambda: len(server.connections) == LIMIT, timeout_s=10)
    assert await _get(*held[1], "/used") == (200, b'{"path": "/used"}')     # the second: idle since just now
    newcomer = await _open(port)
    assert await _get(*newcomer, "/new") == (200, b'{"path": "/new"}')
    assert await _closed_by_server(held[0][0]), "the connection idle longest was closed to make room"
    assert await _get(*held[1], "/again") == (200, b'{"path": "/again"}')   # the others stay open
    assert await _get(*held[2], "/third") == (200, b'{"path": "/third"}')
    assert app.shed == ["idle_closed"] and server.shed == {"idle_closed": 1, "refused": 0}
    assert len(server.connections) == LIMIT


async def test_a_connection_still_sending_its_head_counts_as_idle(served) -> None:
    """A client that sends a head a byte at a time (slowloris) holds no request yet: closed for room first."""
    app, server, port = served
    slow_reader, slow_writer = await _open(port)
    slow_writer.write(b"GET /never HTTP/1.1\r\nhost:")
    await slow_writer.drain()
    others = [await _open(port) for _ in range(LIMIT - 1)]
    for conn in others:
        assert (await _get(*conn, "/x"))[0] == 200
    newcomer = await _open(port)
    assert (await _get(*newcomer, "/new"))[0] == 200
    assert await _closed_by_server(slow_reader)
    assert app.shed == ["idle_closed"]


async def test_when_every_connection_is_busy_one_more_is_answered_503_and_the_busy_ones_finish(served) -> None:
    app, server, port = served
    busy = await _hold(port, b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
    await wait_for(lambda: app.busy == LIMIT, timeout_s=10)
    reader, _writer = await _open(port)
    refused = await asyncio.wait_for(reader.read(), 10)                     # answered, then closed
    assert refused.startswith(b"HTTP/1.1 503 ") and b"connection: close" in refused.lower()
    body = json.loads(refused.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["status"] == 503 and "connections" in body["error"]["message"]
    assert app.shed == ["refused"]
    app.release.set()
    for reader, _writer in busy:                                            # nothing in flight was cut
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert await reader.readexactly(length) == b'{"path": "/slow"}'
    newcomer = await _open(port)                                            # idle again: room is made
    assert (await _get(*newcomer, "/after"))[0] == 200
    assert app.shed == ["refused", "idle_closed"]


async def test_a_flood_of_idle_connections_leaves_the_server_serving(served) -> None:
    """Ten times the limit opened and held: each newcomer takes the place of the longest idle; the server holds
    no more than its limit, and a client that comes last is served."""
    app, server, port = served
    flood = [await _open(port) for _ in range(LIMIT * 10)]
    await wait_for(lambda: app.shed.count("idle_closed") >= LIMIT * 9, timeout_s=10)
    assert len(server.connections) <= LIMIT
    last = await _open(port)
    assert await _get(*last, "/last") == (200, b'{"path": "/last"}')
    for _reader, writer in flood:
        writer.close()


BODILESS = b"POST /never HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"     # a body that never comes


async def _hold(port: int, head: bytes) -> list:
    """LIMIT connections, each having sent `head`."""
    held = [await _open(port) for _ in range(LIMIT)]
    for _reader, writer in held:
        writer.write(head)
        await writer.drain()
    return held


async def _fill_with_bodiless_heads(server, port: int) -> list:
    """LIMIT connections, each holding a head whose body never comes, all of them in the server's hands."""
    held = await _hold(port, BODILESS)
    await wait_for(lambda: len(server.connections) == LIMIT and all(conn.request for conn in server.connections),
                   timeout_s=10)
    return held


async def test_a_connection_whose_body_never_begins_is_closed_for_room() -> None:
    """Heads promising a 100-byte body that never comes counted as requests in flight: 10,100 of them locked every
    client out for the body timeout (60 s). Past `body_start_s` with no byte of its body, one is closed for room."""
    app = App()
    async with serving(app, grace_s=1.0, max_connections=LIMIT, body_start_s=0.2) as (server, port):
        held = await _fill_with_bodiless_heads(server, port)
        await asyncio.sleep(0.3)                                            # past body_start_s
        newcomer = await _open(port)
        assert await _get(*newcomer, "/new") == (200, b'{"path": "/new"}')
        assert await _closed_by_server(held[0][0]), "the one waiting longest for its body was closed"
        assert app.shed == ["idle_closed"]
        for _reader, writer in held:
            writer.close()


async def test_heads_without_bodies_sent_faster_than_any_grace_keep_no_caller_out() -> None:
    """With 5 s of grace for a body to begin, 10,500 such heads sent in 2.4 s answered every new caller 503 until
    the oldest was 5 s old, and a flood that kept coming kept everyone out. The one waiting longest goes at once."""
    app = App()
    async with serving(app, grace_s=1.0, max_connections=LIMIT) as (server, port):
        held = await _fill_with_bodiless_heads(server, port)
        for round_ in range(3):                       # the flood goes on: each caller still gets in
            newcomer = await _open(port)
            assert await _get(*newcomer, f"/new{round_}") == (200, b'{"path": "/new%d"}' % round_)
            newcomer[1].close()
            again = await _open(port)
            again[1].write(BODILESS)
            held.append(again)
        assert await _closed_by_server(held[0][0]), "the one waiting longest for its body was closed"
        for _reader, writer in held:
            writer.close()


async def test_a_body_that_has_begun_keeps_its_connection_at_the_limit(served) -> None:
    app, _, port = served
    held = await _hold(port, b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nsome")
    await wait_for(lambda: app.busy == LIMIT, timeout_s=10)
    reader, _writer = await _open(port)
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 503 ")
    for _reader, writer in held:
        writer.close()


@pytest.mark.parametrize(("open_files", "held"), [
    (1024, 768),                  # a common soft limit: a quarter kept for the process's own files
    (256, 192),
    (100, 36),                    # at least 64 kept
    (20_000, MAX_CONNECTIONS),    # 2,048 kept at most, and never more than MAX_CONNECTIONS
    (65, 1),
])
def test_the_default_limit_leaves_files_for_the_process_itself(open_files: int, held: int) -> None:
    assert default_max_connections(open_files) == held


def test_a_service_raises_its_soft_open_file_limit_to_the_hard_one() -> None:
    """A server started with the soft limit many systems give (1,024, or lower) runs with the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise the soft one to")
    script = ("import resource; from switchyard_gateway.kit.serve import raise_open_file_limit; "
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], raise_open_file_limit())")

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    done = subprocess.run([sys.executable, "-c", script], preexec_fn=lowered, capture_output=True, text=True,
                          timeout=60, check=True)
    before, after = (int(n) for n in done.stdout.split())
    assert before == 256
    assert after == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]            # this process's own is untouched
