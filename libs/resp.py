"""A lean pipelined Valkey/Redis client: one connection, RESP2, replies in order.

Every call queues its command and awaits a future; the commands queued in one turn of the event loop go
out in one write, and replies arrive in request order, so concurrent calls share the connection (and its
system calls) without waiting for each other: `asyncio.gather` of calls is a pipeline. It replaces redis-py everywhere (the gateway's reservations and cache, the quota service, the
launcher's readiness check): `benchmarks/clients.py` measures it against redis-py's asyncio client.

    ValkeyError          the server answered with an error (`-ERR ...`, `-NOSCRIPT ...`, `-LOADING ...`)
    ConnectionError      no connection, or it was lost with calls in flight (an OSError)
    TimeoutError         no reply within the client's `timeout_s`, when one is set
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class ValkeyError(Exception):
    """An error reply from the server."""


class Framed:
    """Arguments framed once for many commands (the parts of a call that do not change), sent as they are."""

    __slots__ = ("data", "count")

    def __init__(self, args: Sequence[Any]) -> None:
        self.data = b"".join(_frame(arg) for arg in args)
        self.count = len(args)


def _frame(arg: Any) -> bytes:
    kind = type(arg)
    data = arg.encode() if kind is str else b"%d" % arg if kind is int else arg if kind is bytes else str(arg).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(args: tuple[Any, ...]) -> bytes:
    parts = []
    append = parts.append
    count = len(args)
    for arg in args:
        kind = type(arg)
        if kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        elif kind is bytes:
            data = arg
        elif kind is Framed:
            append(arg.data)
            count += arg.count - 1
            continue
        else:
            data = str(arg).encode()
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"*%d\r\n%s" % (count, b"".join(parts))


_INCOMPLETE = object()


def parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One reply from `buffer` at `pos`: (value, next position), or (_INCOMPLETE, the length the buffer must reach
    before the reply can be whole), so that a large reply arriving in many pieces is not read again from its start at
    every piece."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, len(buffer) + 1
    kind = buffer[pos]
    after = end + 2
    if kind == _INTEGER:
        return int(buffer[pos + 1:end]), after
    if kind == _ARRAY:
        count = int(buffer[pos + 1:end])
        if count < 0:
            return None, after
        items: list[Any] = []
        append, find, size = items.append, buffer.find, len(buffer)
        for _ in range(count):
            if after < size and buffer[after] == _INTEGER:     # the common item (script replies): inline
                end = find(b"\r\n", after)
                if end < 0:
                    return _INCOMPLETE, size + 1
                append(int(buffer[after + 1:end]))
                after = end + 2
                continue
            item, after = parse(buffer, after)
            if item is _INCOMPLETE:
                return _INCOMPLETE, after
            append(item)
        return items, after
    if kind == _BULK:
        size = int(buffer[pos + 1:end])
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return _INCOMPLETE, after + size + 2
        return bytes(buffer[after:after + size]), after + size + 2
    if kind == _SIMPLE:
        return bytes(buffer[pos + 1:end]).decode(), after
    if kind == _ERROR:
        return ValkeyError(bytes(buffer[pos + 1:end]).decode()), after
    raise ValkeyError(f"unexpected reply type {bytes(buffer[pos:pos + 1])!r}")


_INTEGER, _ARRAY, _BULK, _SIMPLE, _ERROR = b":*$+-"


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.buffer = bytearray()
        self.need = 0                   # the buffer's length before which the reply it holds cannot be whole
        self.outgoing: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a command; every command queued in one turn of the event loop goes out in one write."""
        future = self.loop.create_future()
        self.waiting.append(future)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(command)
        return future

    def _flush(self) -> None:
        commands, self.outgoing = self.outgoing, []
        if not self.lost and self.transport is not None:
            self.transport.write(commands[0] if len(commands) == 1 else b"".join(commands))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < self.need:            # a large reply still coming: not read again until it can be whole
            return
        pos = need = 0
        while self.waiting and pos < len(self.buffer):
            value, nxt = parse(self.buffer, pos)
            if value is _INCOMPLETE:
                need = nxt
                break
            pos = nxt
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(value)
        del self.buffer[:pos]
        self.need = need - pos if need else 0

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("the Valkey connection was lost"))


def _expire(future: asyncio.Future[Any]) -> None:
    """A call's reply is late: the caller gets TimeoutError; the reply, when it comes, is read and dropped."""
    if not future.done():
        future.set_exception(TimeoutError("Valkey did not answer in time"))


class Address:
    """Where a `redis://[[user]:password@]host[:port][/db]` URL points, or a `unix://[[user]:password@]/path[?db=N]`
    URL (a Unix socket, as redis-py spells it), and how to log in."""

    __slots__ = ("host", "port", "path", "username", "password", "db")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "valkey", "unix"):
            raise ValueError(f"not a redis:// or unix:// URL: {parts.scheme}://...")
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// URL names the socket's path: unix:///path/to/valkey.sock")
            self.host, self.port, self.path = "", 0, unquote(parts.path)
            self.db = int(parse_qs(parts.query).get("db", ["0"])[0])
        else:
            self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 6379, None
            self.db = int(parts.path.strip("/") or 0)

    @property
    def where(self) -> str:
        """The server, as error messages name it."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def hello(self) -> list[tuple[Any, ...]]:
        """The commands that open a session: AUTH if there is a password, SELECT if not database 0."""
        out: list[tuple[Any, ...]] = []
        if self.password:
            out.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            out.append(("SELECT", self.db))
        return out


class Valkey:
    """One pipelined connection to the server at a `redis://` URL, reopened on demand after it is lost.

    `timeout_s` bounds each call (None: callers bound it themselves, as the gateway's hot path does).
    A call that times out keeps its place in the reply order, so the connection stays in step.
    """

    def __init__(self, url: str, connect_timeout_s: float = 2.0, timeout_s: float | None = None) -> None:
        address = Address(url)
        self.host, self.port, self.path, self.where = address.host, address.port, address.path, address.where
        self._hello = address.hello()
        self.connect_timeout_s, self.timeout_s = connect_timeout_s, timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                connecting = loop.create_unix_connection(_Protocol, self.path) if self.path is not None else \
                    loop.create_connection(_Protocol, self.host, self.port)
                _, proto = await asyncio.wait_for(connecting, self.connect_timeout_s)
            except (OSError, asyncio.TimeoutError) as exc:
                raise ConnectionError(f"Valkey at {self.where} is unreachable: {exc}") from None
            try:
                for command in self._hello:
                    await self._send(proto, command)
            except BaseException:
                if proto.transport is not None:
                    proto.transport.close()
                raise
            self._proto = proto
            return proto

    async def _send(self, proto: _Protocol, args: tuple[Any, ...]) -> Any:
        value = await proto.send(encode_command(args))
        if isinstance(value, ValkeyError):
            raise value
        return value

    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Send one command and return its reply; ValkeyError for an error reply. `timeout_s` (else the client's)
        bounds the wait for the connection and the reply: TimeoutError past it."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        proto = self._proto
        if proto is None or proto.lost:             # (re)connecting: the slow path, bounded as a whole
            if timeout_s is None:
                return await self._send(await self._connection(), args)
            async with asyncio.timeout(timeout_s):
                return await self._send(await self._connection(), args)
        future = proto.send(encode_command(args))
        if timeout_s is None:
            value = await future
        else:                                       # one timer on the reply, cheaper than a timeout scope
            expiry = proto.loop.call_later(timeout_s, _expire, future)
            try:
                value = await future
            finally:
                expiry.cancel()
        if isinstance(value, ValkeyError):
            raise value
        return value

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        """A hash as a dict (empty if there is no such key)."""
        flat = await self.call("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2]))

    async def scan(self, match: str, count: int = 1000) -> AsyncIterator[bytes]:
        """Every key matching a glob pattern, without blocking the server (SCAN, `count` keys a step)."""
        cursor = b"0"
        while True:
            cursor, keys = await self.call("SCAN", cursor, "MATCH", match, "COUNT", count)
            for key in keys:
                yield key
            if cursor == b"0":
                return

    async def evalsha(self, sha: str, source: str, keys: list[str] | Framed, args: Sequence[Any],
                      timeout_s: float | None = None) -> Any:
        """Run a script by its SHA-1, loading it first if the server does not know it. `keys` may come framed
        (`Framed`), and so may some of `args`."""
        head = (keys.count, keys) if type(keys) is Framed else (len(keys), *keys)
        try:
            return await self.call("EVALSHA", sha, *head, *args, timeout_s=timeout_s)
        except ValkeyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", source, *head, *args, timeout_s=timeout_s)

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()


def ping(url: str, timeout_s: float = 1.0) -> None:
    """PING the server over a blocking socket, for callers without an event loop (the launcher).

    Raises ConnectionError when it cannot be reached or answers nothing, ValkeyError for an error
    reply (`-LOADING` while it reads its append-only file)."""
    address = Address(url)
    try:
        with _connect(address, timeout_s) as sock:
            commands = [*address.hello(), ("PING",)]
            sock.sendall(b"".join(encode_command(command) for command in commands))
            buffer, pos, replies = bytearray(), 0, []
            while len(replies) < len(commands):
                value, nxt = parse(buffer, pos)
                if value is _INCOMPLETE:
                    data = sock.recv(4096)
                    if not data:
                        raise ConnectionError(f"Valkey at {address.where} closed the connection")
                    buffer += data
                    continue
                replies.append(value)
                pos = nxt
    except OSError as exc:
        if isinstance(exc, ConnectionError):
            raise
        raise ConnectionError(f"Valkey at {address.where} is unreachable: {exc}") from None
    for reply in replies:
        if isinstance(reply, ValkeyError):
            raise reply


def _connect(address: Address, timeout_s: float) -> socket.socket:
    """A blocking socket to the server."""
    if address.path is None:
        return socket.create_connection((address.host, address.port), timeout=timeout_s)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(address.path)
    except BaseException:
        sock.close()
        raise
    return sock
