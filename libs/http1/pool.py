"""The connection pool: keep-alive HTTP/1.1 connections per host, and the request entry point."""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

from switchyard_gateway.http1.conn import Connection, NoResponse, Response
from switchyard_gateway.http1.response import Fetched
from switchyard_gateway.http1.wire import ConnectFailed, DeadlineExceeded, ReadTimeout, ResponseCut, TransportError

__all__ = ["ConnectFailed", "DeadlineExceeded", "Fetched", "Pool", "ReadTimeout", "Response", "ResponseCut",
           "TransportError"]

MAX_TARGETS = 4096  # cached (method, url) parses; the cache starts over beyond this
CLOSE_DEADLINE_S = 1.0
_NO_LENGTH_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class Pool:
    """Keep-alive HTTP/1.1 connections to any number of upstream hosts, at most
    `max_connections_per_host` to each; beyond that, requests queue first in, first out."""

    def __init__(
        self,
        *,
        max_connections_per_host: int = 256,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        self.max_connections_per_host = max_connections_per_host
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._ssl_context = ssl_context
        self._hosts: dict[tuple[str, str, int], Host] = {}
        self._targets: dict[tuple[str, str], _Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    async def request(
        self,
        method: str,
        url: str,
        body: bytes,
        headers: Sequence[tuple[str, str]],
        read_timeout_s: float = 300.0,
    ) -> Response:
        """Send one request and return the Response once its status line and headers arrived.

        Raises ConnectFailed, ReadTimeout or ResponseCut; ValueError for a bad URL or header.
        """
        target = self._targets.get((method, url))
        if target is None:
            target = self._target(method, url)
        length = b"Content-Length: %d\r\n" % len(body) if body or target.with_length else b""
        if headers:
            text = "\r\n".join(map(": ".join, headers))
            if text.count("\n") + text.count("\r") != 2 * len(headers) - 2:
                raise ValueError("header names and values must not contain line breaks")
            message = b"".join((target.prefix, length, text.encode(), b"\r\n\r\n", body))
        else:
            message = b"".join((target.prefix, length, b"\r\n", body))
        host = target.host
        idle = host.idle
        conn = idle.pop() if idle else None
        if conn is None or conn.closing:
            conn = await host.acquire(fresh=False)
        retry = conn.uses > 0  # a reused connection may have been closed while idle
        while True:
            try:
                waiter = conn.send(message, target.head_only, read_timeout_s)
                try:
                    return await waiter
                except asyncio.CancelledError:
                    conn.abandon(waiter)
                    raise
            except NoResponse:
                if not retry:
                    raise
            retry = False
            conn = await host.acquire(fresh=True)

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        timeout_s: float,
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> Fetched:
        """Send one request and read its whole response within `timeout_s` (connect, head and body).

        For short exchanges (probes, admin calls), where one deadline matters rather than the time
        between bytes. Raises DeadlineExceeded, ConnectFailed, or ResponseCut (also for a body over
        `max_body_bytes`, whose connection is then closed).
        """
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self.request(method, url, body, headers, read_timeout_s=timeout_s)
                try:
                    chunks, size = [], 0
                    async for data in resp:
                        size += len(data)
                        if size > max_body_bytes:
                            raise ResponseCut(f"the response body is larger than {max_body_bytes} bytes")
                        chunks.append(data)
                finally:
                    resp.release()
        except TimeoutError:
            raise DeadlineExceeded(f"no complete response within {timeout_s:g} s") from None
        return Fetched(resp.status, resp.headers, b"".join(chunks))

    async def close(self) -> None:
        """Close every connection; requests waiting for one fail with ConnectFailed."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for host in self._hosts.values():
            host.shut()
        deadline = time.monotonic() + CLOSE_DEADLINE_S
        while any(host.conns for host in self._hosts.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)

    def _target(self, method: str, url: str) -> _Target:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an absolute http:// or https:// URL: {url!r}")
        if not method or not method.isascii() or not method.isprintable() or " " in method:
            raise ValueError(f"not an HTTP method: {method!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        host = self._hosts.get(key)
        if host is None:
            context = None
            if scheme == "https":
                context = self._ssl_context or tls_context()
                self._ssl_context = context
            host = self._hosts[key] = Host(self, parts.hostname, port, context)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        netloc = parts.netloc.rpartition("@")[2]
        head = f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\n"
        if not head.isascii() or head.count("\n") != 2 or " " in path:
            raise ValueError(f"the URL needs percent-encoding: {url!r}")
        target = _Target(host, head.encode(), method == "HEAD", method not in _NO_LENGTH_METHODS)
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        self._targets[(method, url)] = target
        return target

    def _went_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and not self.closed:
            self._sweeper = loop.call_later(self.idle_timeout_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close connections idle for idle_timeout_s; come back when the next one will be."""
        self._sweeper = None
        cutoff = loop.time() - self.idle_timeout_s + 0.001
        oldest = None
        for host in self._hosts.values():
            idle = host.idle
            while idle and idle[0].idle_since <= cutoff:
                idle.pop(0).close()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweeper = loop.call_at(oldest + self.idle_timeout_s, self._sweep, loop)


def _reason(exc: OSError) -> str:
    """What went wrong connecting, briefly: "connection refused" rather than the loop's errno text."""
    text = str(exc)
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED or (
            text.startswith("Multiple exceptions") and f"[Errno {errno.ECONNREFUSED}]" in text):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return text or type(exc).__name__


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """TLS as hosted APIs expect it: certificates verified against the system's CAs (or `cafile`), the host
    name checked and sent (SNI), and HTTP/1.1 named in ALPN, so a server that also speaks h2 picks 1.1."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Target:
    """A parsed (method, url): its host and the request head up to the caller's headers."""

    __slots__ = ("host", "prefix", "head_only", "with_length")

    def __init__(self, host: Host, prefix: bytes, head_only: bool, with_length: bool) -> None:
        self.host = host
        self.prefix = prefix  # b"POST /path HTTP/1.1\r\nHost: netloc\r\n"
        self.head_only = head_only
        self.with_length = with_length  # send Content-Length: 0 for an empty body


class Host:
    """The connections to one scheme://host:port: idle ones (most recently used last),
    every open one, connects under way, and the requests waiting for a connection."""

    __slots__ = ("pool", "hostname", "port", "ssl", "idle", "conns", "opening", "waiters")

    def __init__(self, pool: Pool, hostname: str, port: int, context: ssl.SSLContext | None):
        self.pool = pool
        self.hostname = hostname
        self.port = port
        self.ssl = context
        self.idle: list[Connection] = []
        self.conns: set[Connection] = set()
        self.opening = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()

    async def acquire(self, fresh: bool) -> Connection:
        """An idle connection (unless `fresh`), a new one, or the next one freed (FIFO)."""
        if self.pool.closed:
            raise ConnectFailed("the pool is closed")
        idle = self.idle
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closing:
                return conn
        if not self.waiters and len(self.conns) + self.opening < self.pool.max_connections_per_host:
            self.opening += 1
            return await self._open()
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over just before the cancel: pass it on
                if handed is None:
                    self.opening -= 1
                    self._pass_slot()
                else:
                    self.release(handed)
            raise
        return conn if conn is not None else await self._open()

    async def _open(self) -> Connection:
        """Connect, within a slot already counted in `opening`."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.pool.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, loop), self.hostname, self.port, ssl=self.ssl,
                    server_hostname=self.hostname if self.ssl is not None else None,
                )  # fmt: skip
        except OSError as exc:  # refused, unreachable, DNS, TLS, and TimeoutError
            raise ConnectFailed(f"cannot connect to {self.hostname}:{self.port}: {_reason(exc)}") from None
        finally:
            self.opening -= 1
            self._pass_slot()
        if self.pool.closed:
            conn.abort()
            raise ConnectFailed("the pool is closed")
        return conn

    def opened(self, conn: Connection) -> None:
        self.conns.add(conn)

    def release(self, conn: Connection) -> None:
        """`conn` finished an exchange and stays open: to the first waiter, else idle."""
        if self.pool.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        loop = conn.loop
        conn.idle_since = loop.time()
        self.idle.append(conn)
        self.pool._went_idle(loop)

    def lost(self, conn: Connection) -> None:
        """`conn` closed: forget it and pass its slot on."""
        self.conns.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        self._pass_slot()

    def _pass_slot(self) -> None:
        waiters = self.waiters
        while waiters and len(self.conns) + self.opening < self.pool.max_connections_per_host:
            waiter = waiters.popleft()
            if not waiter.done():
                self.opening += 1
                waiter.set_result(None)  # the waiter connects in this slot

    def shut(self) -> None:
        """Close every connection and fail every waiter (the pool is closing)."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the pool closed"))
        for conn in self.idle:
            conn.close()
        self.idle.clear()
        for conn in list(self.conns):
            conn.abort()
