"""End to end: embeddings over the WebSocket at /ws, with a real client (`websockets`), on `switchyard up --demo`
and on a gateway of its own with tight WebSocket settings and the response cache on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from switchyard_gateway.contracts.subjects import USAGE_RECORDED
from switchyard_gateway.services.gateway.edge.ws_frames import read_binary
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DUPLICATE_GRACE_S, DemoStack, logged, wait_for
from tests.e2e.test_admin_registry import api, ok
from tests.e2e.test_quota_e2e import Gateway, admin, new_tenant, set_limits, start_gateway, stop_gateway


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://") + "/ws"


def opened(url: str, key: str | None, **headers: str) -> connect:
    extra = {**({"Authorization": f"Bearer {key}"} if key else {}), **headers}
    return connect(ws_url(url), additional_headers=extra, open_timeout=10, max_size=2 ** 24)


async def answers(ws: ClientConnection, count: int) -> list[dict | bytes]:
    got = []
    for _ in range(count):
        message = await asyncio.wait_for(ws.recv(), 30)
        got.append(message if isinstance(message, bytes) else json.loads(message))
    return got


async def until_closed(ws: ClientConnection) -> list[dict | bytes]:
    """Every message until the gateway closes the socket."""
    got: list[dict | bytes] = []
    try:
        while True:
            message = await asyncio.wait_for(ws.recv(), 30)
            got.append(message if isinstance(message, bytes) else json.loads(message))
    except ConnectionClosed:
        return got


async def usage_events(demo: DemoStack, connection: str) -> list[dict]:
    return await logged(demo.database_url, USAGE_RECORDED, "payload->>'request_id' LIKE $2", f"{connection}.%")


async def exactly(demo: DemoStack, connection: str, count: int) -> list[dict]:
    """Wait until the log holds `count` usage events of the connection's requests, then check none is doubled."""
    events = await wait_for(lambda: _at_least(usage_events(demo, connection), count), timeout_s=30,
                            what=f"{count} usage events of {connection}")
    await asyncio.sleep(DUPLICATE_GRACE_S)            # give a duplicate the chance to arrive
    events = await usage_events(demo, connection)
    ids = [e["request_id"] for e in events]
    assert len(ids) == len(set(ids)) == count, sorted(ids)
    return events


async def _at_least(found, count: int):
    events = await found
    return events if len(events) >= count else None


@contextlib.asynccontextmanager
async def own_model(demo: DemoStack, name: str, latency_ms: float = 0.0) -> AsyncIterator[Simulator]:
    """An embedding model `name` served only by a simulator of this test (`latency_ms` before each answer)."""
    ok(await api(demo, "POST", "/providers", {"provider_id": name, "kind": "openai-compatible"}))
    ok(await api(demo, "POST", "/models", {"model_id": name, "kind": "embedding"}))
    async with Simulator(SimConfig(models=(name,), latency_ms=latency_ms)) as sim:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": name, "provider_id": name, "base_url": sim.url,
                                                  "models": [name]}))
        yield sim
        await api(demo, "DELETE", f"/endpoints/{name}")


@pytest.fixture
async def slow_model(demo: DemoStack) -> AsyncIterator[str]:
    """An embedding model served by a simulator of this test that takes 1.5 s to answer."""
    name = f"wslow-{uuid.uuid4().hex[:8]}"
    async with own_model(demo, name, latency_ms=1500):
        yield name


async def test_requests_are_answered_by_id_as_json_or_binary_and_metered_once_each(demo: DemoStack) -> None:
    connection = uuid.uuid4().hex
    async with opened(demo.url, demo.demo_key, **{"X-Request-Id": connection}) as ws:
        for i in range(3):
            await ws.send(json.dumps({"id": f"q{i}", "model": "nomic-embed-text", "input": [f"text {i}", "more"]}))
        await ws.send(json.dumps({"id": 99, "model": "nomic-embed-text", "input": ["text 1", "more"],
                                  "binary": True}))
        got = await answers(ws, 4)
    texts = {a["id"]: a for a in got if isinstance(a, dict)}
    assert set(texts) == {"q0", "q1", "q2"}
    for answer in texts.values():
        assert answer["status"] == 200 and answer["object"] == "list" and len(answer["data"]) == 2
        assert answer["request_id"].startswith(f"{connection}.") and answer["usage"]["prompt_tokens"] > 0
    [frame] = [a for a in got if isinstance(a, bytes)]
    ident, vectors, tokens = read_binary(frame)
    assert ident == "99" and frame[5] & 1 and tokens == texts["q1"]["usage"]["prompt_tokens"]
    assert vectors == [pytest.approx(d["embedding"], rel=1e-6) for d in texts["q1"]["data"]], \
        "the binary frame carries the same vectors as float32"
    events = await exactly(demo, connection, 4)
    assert {(e["api"], e["outcome"], e["status"], e["tenant_id"]) for e in events} == \
        {("openai.embeddings", "ok", 200, "demo")}


async def test_the_upgrade_is_refused_without_a_valid_key_or_with_another_tenants_id(demo: DemoStack) -> None:
    for key, headers, status in ((None, {}, 401), ("sy_nope_notakey", {}, 401),
                                 (demo.demo_key, {"X-Tenant-ID": "admin"}, 403)):
        with pytest.raises(InvalidStatus) as refused:
            async with opened(demo.url, key, **headers):
                pass
        answer = refused.value.response
        assert answer.status_code == status
        assert len(answer.headers.get("x-request-id", "")) >= 8, "a refused upgrade carries its request id"
        message = {401: "Invalid or expired token", 403: "X-Tenant-ID names another tenant than the key's"}[status]
        assert json.loads(answer.body) == {"error": message}, "and says why, as every other answer does"
    async with opened(demo.url, None, **{"X-API-Key": demo.demo_key, "X-Tenant-ID": "demo"}) as ws:
        await ws.send(json.dumps({"type": "ping", "id": "p"}))
        assert json.loads(await ws.recv()) == {"type": "pong", "id": "p"}
        assert await asyncio.wait_for(await ws.ping(), 5) >= 0, "WebSocket pings are answered"


def test_a_plain_request_to_the_socket_is_told_to_upgrade(demo: DemoStack) -> None:
    """`curl /ws` learns that the route is there and speaks WebSocket (426), not that it does not exist."""
    answer = httpx.get(f"{demo.url}/ws", headers={"Authorization": f"Bearer {demo.demo_key}"})
    assert answer.status_code == 426 and answer.headers["upgrade"] == "websocket"
    assert "WebSocket" in answer.json()["error"] and answer.headers["x-request-id"]


async def test_bad_messages_get_errors_with_their_id_and_a_binary_message_closes_the_socket(demo: DemoStack) -> None:
    async with opened(demo.url, demo.demo_key) as ws:
        await ws.send("{not json")
        await ws.send(json.dumps({"id": "a", "input": "no model"}))
        await ws.send(json.dumps({"id": "b", "model": "no-such-model", "input": "x"}))
        await ws.send(json.dumps({"id": ["x"], "model": "nomic-embed-text", "input": "x"}))
        await ws.send(json.dumps({"id": "c", "model": "nomic-embed-text", "input": "x", "binary": "yes"}))
        await ws.send(json.dumps({"id": "d", "type": "chat", "model": "nomic-embed-text"}))
        await ws.send("[" * 100_000 + "]" * 100_000)            # was an unhandled RecursionError closing the socket
        got = await answers(ws, 7)
        assert got[0]["id"] is None and got[0]["status"] == 400 and got[0]["error"]["code"] == "invalid_json"
        assert "json_too_deep" in [a["error"]["code"] for a in got if a["id"] is None and a["status"] == 400]
        by_id = {a["id"]: a for a in got[1:] if isinstance(a["id"], str)}
        assert by_id["a"]["status"] == 400 and "model" in by_id["a"]["error"]["message"]
        assert by_id["b"]["status"] == 404 and by_id["b"]["error"]["code"] == "model_not_found"
        assert by_id["c"]["status"] == 400 and by_id["d"]["status"] == 400
        await ws.send(b"\x00\x01 a binary request")
        assert await until_closed(ws) == [{"type": "close", "code": 1003, "reason": "send requests as text messages"}]
        assert (ws.close_code, ws.close_reason) == (1003, "send requests as text messages"), "the frame says it too"


def raw_socket(port: int, key: str, connection: str, receive_buffer: int = 0) -> tuple[socket.socket, bytes]:
    """/ws opened with a raw socket (with a receive buffer of `receive_buffer` bytes, if given: a client that
    reads little); the socket and what came after the handshake's answer."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)      # before connecting: the window
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                 f"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                 f"authorization: Bearer {key}\r\nx-request-id: {connection}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101 "), data[:80]
    return sock, data.split(b"\r\n\r\n", 1)[1]


def masked_text(message: dict) -> bytes:
    """A client's text frame (masked with zeros: the payload as it is)."""
    payload = json.dumps(message).encode()
    size = struct.pack("!BH", 0xFE, len(payload)) if len(payload) >= 126 else bytes((0x80 | len(payload),))
    return b"\x81" + size + b"\0\0\0\0" + payload


def close_frame(sock: socket.socket, data: bytes) -> tuple[int, str]:
    """The code and reason of the close frame the gateway sends next (nothing else comes first in these tests)."""
    while not ((at := data.find(b"\x88")) >= 0 and len(data) >= at + 2 + data[at + 1]):
        chunk = sock.recv(4096)
        assert chunk, "closed without a close frame"
        data += chunk
    payload = data[at + 2:at + 2 + data[at + 1]]
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def read_messages(sock: socket.socket, data: bytes, count: int) -> list[dict]:
    """The next `count` text messages the gateway sends on a raw socket."""
    got: list[dict] = []
    while len(got) < count:
        length, at = (data[1] & 0x7F, 2) if len(data) >= 2 else (0, 0)
        if at and length == 126:
            length, at = (struct.unpack("!H", data[2:4])[0], 4) if len(data) >= 4 else (0, 0)
        elif at and length == 127:
            length, at = (struct.unpack("!Q", data[2:10])[0], 10) if len(data) >= 10 else (0, 0)
        if at and len(data) >= at + length:
            assert data[0] == 0x81, data[:2]
            got.append(json.loads(data[at:at + length]))
            data = data[at + length:]
            continue
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(got)} messages"
        data += chunk
    return got


def _unmasked_frame_close(port: int, key: str, connection: str) -> int:
    """Open /ws with a raw socket, send a text frame without the mask RFC 6455 requires of clients, and return the
    code of the close frame the gateway answers with."""
    sock, data = raw_socket(port, key, connection)
    with sock:
        sock.sendall(b"\x81\x02hi")
        return close_frame(sock, data)[0]


async def test_a_socket_closed_for_a_protocol_breach_is_logged_with_its_code(demo: DemoStack) -> None:
    """A socket our server closed with 1002 was logged and counted as the client's normal close (1000)."""
    connection = uuid.uuid4().hex
    assert await asyncio.to_thread(_unmasked_frame_close, demo.port, demo.demo_key, connection) == 1002
    log = demo.data_dir / "logs" / "gateway.log"

    def closed() -> dict | None:
        for line in log.read_text().splitlines():
            if connection in line and '"ws.closed"' in line:
                return json.loads(line)
        return None

    entry = await wait_for(closed, timeout_s=10, what="the socket's ws.closed line")
    assert entry["code"] == 1002


def _over_the_limit(port: int, key: str) -> tuple[int, str]:
    sock, data = raw_socket(port, key, uuid.uuid4().hex)
    with sock:
        sock.sendall(b"\x81\xff" + struct.pack("!Q", 5 * 1024 * 1024) + b"\0\0\0\0" + b"{" * 65536)
        return close_frame(sock, data)


async def test_a_message_over_the_body_limit_is_refused_as_its_frame_header_arrives(demo: DemoStack) -> None:
    """/ws read messages of up to 16 MiB, four times the gateway's 4 MiB body limit, before refusing them: 10
    sockets holding 14 MiB partial frames added 143 MiB. The 5 MiB frame is refused by its header, 64 KiB in."""
    code, reason = await asyncio.to_thread(_over_the_limit, demo.port, demo.demo_key)
    assert (code, reason) == (1009, f"a message over the {4 * 1024 * 1024}-byte limit")


def _read_no_further(port: int, key: str, connection: str, model: str, sim: Simulator) -> list[dict]:
    """A client that sends one request with a 6 MB answer and reads nothing, then sends 8 more; the answers, once
    it reads. Asserts that none of the 8 was called while the first answer waited."""
    sock, data = raw_socket(port, key, connection, receive_buffer=4096)
    with sock:
        sock.sendall(masked_text({"id": "big", "model": model, "input": [f"text {i}" for i in range(400)]}))
        deadline = time.monotonic() + 20
        while True:                                      # its answer is being written: the gateway waits for us
            sock.setblocking(False)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except BlockingIOError:
                pass
            assert time.monotonic() < deadline, "no answer began"
            time.sleep(0.02)
        sock.settimeout(10)
        sock.sendall(b"".join(masked_text({"id": i, "model": model, "input": f"small {i}"}) for i in range(8)))
        time.sleep(1.0)                                  # 8 calls of a millisecond each would reach the simulator
        assert sim.stats.requests.get("/v1/embeddings") == 1, "requests were read while an answer waited"
        return read_messages(sock, data, 9)


async def test_a_client_that_stops_reading_is_not_read_until_it_reads_again(demo: DemoStack) -> None:
    """A client that sent requests and read nothing had them all called, their answers held whole for it until the
    send timeout (two such sockets: +213 MiB). While an answer waits for the client, no further request is read
    now: a client that stops reading holds what it had in flight, no more. Reading, it gets every answer."""
    model, connection = f"wsread-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    async with own_model(demo, model) as sim:
        got = await asyncio.to_thread(_read_no_further, demo.port, demo.demo_key, connection, model, sim)
        assert got[0]["id"] == "big" and len(got[0]["data"]) == 400
        assert sorted(a["id"] for a in got[1:]) == list(range(8)) and {a["status"] for a in got} == {200}
        assert sim.stats.requests.get("/v1/embeddings") == 9
    await exactly(demo, connection, 9)


async def test_more_requests_in_flight_than_the_bound_answer_those_then_close_1013(demo: DemoStack,
                                                                                 slow_model: str) -> None:
    connection = uuid.uuid4().hex
    async with opened(demo.url, demo.demo_key, **{"X-Request-Id": connection}) as ws:
        for i in range(40):                                  # a flood: 16 may be in flight
            await ws.send(json.dumps({"id": i, "model": slow_model, "input": f"flood {i}"}))
        got = await until_closed(ws)
    *answered, closing = got
    assert closing == {"type": "close", "code": 1013,
                       "reason": "more than 16 requests in flight on one connection"}
    assert len(answered) == 16 and {a["status"] for a in answered} == {200}
    assert sorted(a["id"] for a in answered) == list(range(16))
    await exactly(demo, connection, 16)


async def test_a_client_that_hangs_up_mid_request_has_each_request_cancelled_and_metered_once(demo: DemoStack,
                                                                                    slow_model: str) -> None:
    connection = uuid.uuid4().hex
    async with opened(demo.url, demo.demo_key, **{"X-Request-Id": connection}) as ws:
        for i in range(5):
            await ws.send(json.dumps({"id": i, "model": slow_model, "input": f"abandoned {i}"}))
        await asyncio.sleep(0.3)              # the requests reach the gateway before the client goes
    events = await exactly(demo, connection, 5)
    assert all(e["endpoint_id"].startswith("wslow-") for e in events)
    assert {e["outcome"] for e in events} == {"cancelled"}, "the client left: its calls were dropped, not waited on"


async def test_quotas_apply_per_request_and_a_revoked_key_closes_the_socket_4401(demo: DemoStack) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, daily_tokens=40).status_code == 200
    async with opened(demo.url, key) as ws:
        await ws.send(json.dumps({"id": "small", "model": "nomic-embed-text", "input": "a few words"}))
        first = (await answers(ws, 1))[0]
        assert first["status"] == 200
        await ws.send(json.dumps({"id": "big", "model": "nomic-embed-text", "input": " ".join(["words"] * 200)}))
        over = (await answers(ws, 1))[0]
        assert over["status"] == 402 and over["error"]["message"] == "Quota exceeded"
        assert over["error"]["type"] == "insufficient_quota" and over["error"]["quota_type"] == "daily"
        key_id = next(k["key_id"] for k in httpx.get(f"{demo.url}/api/admin/tenants/{tenant}/keys",
                                                     headers=admin(demo)).json())
        assert httpx.delete(f"{demo.url}/api/admin/keys/{key_id}", headers=admin(demo)).status_code == 200
        await ws.send(json.dumps({"id": "after", "model": "nomic-embed-text", "input": "x"}))
        *answered, closing = await until_closed(ws)
    assert [a["status"] for a in answered] == [401] and answered[0]["id"] == "after"
    assert closing["code"] == 4401


# --- a gateway of its own: idle timeout, message deadline, connection bound, cache ---------------------------------------------


@pytest.fixture(scope="module")
def tight(demo: DemoStack, urls) -> Iterator[Gateway]:
    gateway = start_gateway(demo, urls, ws_idle_timeout_s="1", ws_max_connections="3",
                            ws_max_connections_per_tenant="2", cache="embeddings",
                            ws_message_timeout_s="0.5")
    yield gateway
    stop_gateway(gateway)


async def test_an_idle_socket_is_closed_and_sockets_past_the_bound_are_refused(demo: DemoStack,
                                                                            tight: Gateway) -> None:
    """The gateway's bound (3) and a tenant's share of it (2): one member key took every socket of the gateway, and
    every other tenant was refused 503 for as long as it kept them (a ping every 2 minutes keeps one open)."""
    _, other_key = new_tenant(demo)
    async with opened(tight.url, demo.demo_key) as one, opened(tight.url, demo.demo_key) as two:
        with pytest.raises(InvalidStatus) as refused:
            async with opened(tight.url, demo.demo_key):
                pass
        assert refused.value.response.status_code == 429
        assert json.loads(refused.value.response.body)["error"] == (
            "This tenant already holds 2 WebSocket connections, as many as one tenant may; close one, or send more "
            "requests on each (up to the in-flight bound)")
        async with opened(tight.url, other_key) as others:          # another tenant still gets the third
            await others.send(json.dumps({"type": "ping"}))
            assert json.loads(await others.recv())["type"] == "pong"
            with pytest.raises(InvalidStatus) as refused:
                async with opened(tight.url, other_key):
                    pass
            assert refused.value.response.status_code == 503
        await two.send(json.dumps({"type": "ping"}))
        assert json.loads(await two.recv())["type"] == "pong"
        assert await until_closed(one) == [{"type": "close", "code": 1001, "reason": "idle for 1 s"}]
        assert one.close_code == 1001                       # the close frame says it too
    async with opened(tight.url, demo.demo_key) as again:               # the bound counts open sockets only
        await again.send(json.dumps({"type": "ping"}))
        assert json.loads(await again.recv())["type"] == "pong"


def _trickled(port: int, key: str) -> tuple[int, str, float]:
    """A message begun (a 100-byte frame, 10 bytes of it sent) and never finished: the close frame, and when."""
    sock, data = raw_socket(port, key, uuid.uuid4().hex)
    with sock:
        began = time.monotonic()
        sock.sendall(b"\x81\xe4\0\0\0\0" + b"{" * 10)          # text, masked (zero mask), 100 bytes long
        code, reason = close_frame(sock, data)
        return code, reason, time.monotonic() - began


async def test_a_message_not_whole_by_the_configured_deadline_closes_the_socket_1008(demo: DemoStack,
                                                                                    tight: Gateway) -> None:
    """The deadline of a message begun is SWITCHYARD_WS_MESSAGE_TIMEOUT_S (0.5 s here, within the idle timeout; 30 by default)."""
    port = int(tight.url.rsplit(":", 1)[1])
    code, reason, after = await asyncio.to_thread(_trickled, port, demo.demo_key)
    assert (code, reason) == (1008, "a message not whole 0.5 s after its first byte")
    assert 0.4 < after < 10


async def test_a_repeated_request_is_answered_from_the_cache(demo: DemoStack, tight: Gateway) -> None:
    body = {"model": "nomic-embed-text", "input": f"cached {uuid.uuid4().hex}"}
    async with opened(tight.url, demo.demo_key) as ws:
        await ws.send(json.dumps({"id": 1, **body}))
        first = (await answers(ws, 1))[0]
        await ws.send(json.dumps({"id": 2, **body}))
        second = (await answers(ws, 1))[0]
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert second["data"] == first["data"] and second["request_id"] != first["request_id"]
