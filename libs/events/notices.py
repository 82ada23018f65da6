"""Wake-ups when the event log grows: the NOTIFY every appending transaction sends at commit, heard on one
LISTEN connection per process.

A notification carries nothing but "look": listeners read the log past their own position, so one
lost while the connection was down costs nothing — after every (re)connect the count moves once, and
whoever follows the log reads it again. Idle, this is one open socket and no wake-up at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import asyncpg
import structlog

from switchyard_gateway.events.marks import Watermark
from switchyard_gateway.kit.retry import TRANSIENT, Backoff

CHANNEL = "switchyard_events"        # sent by the `events_notify` trigger (migration 0030)
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 30, 10, 3   # a silently dead peer, found by the kernel

log = structlog.get_logger()


class LogNotices:
    """Counts the log's commits this process heard of; `commits.beyond(seen)` waits for the next one.

    `run()` keeps the LISTEN connection open until cancelled, reconnecting with backoff; each
    (re)connect counts as a commit heard, since commits may have passed while no one listened.
    """

    def __init__(self, database_url: str, connect_timeout_s: float = 5.0) -> None:
        self.database_url, self.connect_timeout_s = database_url, connect_timeout_s
        self.commits = Watermark()
        self.listening = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()

    async def run(self) -> None:
        backoff = Backoff(first_s=0.2, max_s=5.0)
        while True:
            try:
                conn = await asyncpg.connect(self.database_url, timeout=self.connect_timeout_s)
            except TRANSIENT as exc:
                log.warning("events.listen_failed", error=str(exc) or type(exc).__name__)
                await backoff.wait()
                continue
            try:
                await self._listen(conn)
                backoff.reset()
                await self._lost.wait()
                log.warning("events.listen_lost")
            except TRANSIENT as exc:
                log.warning("events.listen_failed", error=str(exc) or type(exc).__name__)
                await backoff.wait()
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 1.0)

    async def _listen(self, conn: asyncpg.Connection) -> None:
        self._lost = lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        _keep_alive(conn)
        await conn.add_listener(CHANNEL, self._heard)
        self.listening.set()
        self.commits.advance(self.commits.value + 1)      # whatever committed while no one listened

    def _heard(self, _conn: object, _pid: int, _channel: str, _payload: str) -> None:
        self.commits.advance(self.commits.value + 1)


def _keep_alive(conn: asyncpg.Connection) -> None:
    """TCP keepalive on the listening socket: a peer gone without a word is noticed by the kernel, not a timer."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
