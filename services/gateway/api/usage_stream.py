"""`GET /api/usage-stream`: live usage as Server-Sent Events, pushed from usage events, never polled.

Usage events are published to JetStream on `usage.recorded.v2.<tenant>`, and JetStream's subjects are
ordinary subjects too: every gateway subscribes to `usage.recorded.v2.>` on core NATS (only while
someone watches) and pushes each client a fresh snapshot when events arrive. A snapshot is the
seed's shape, `{"usage_counts", "token_usage_counts"}`, plus `recorded`: the calls just recorded.
Token counts start from metering's projection when the client connects and grow with the events
that arrive afterwards. An operator sees every tenant and the gateway's in-flight calls; a tenant
sees only its own calls and tokens. The caller is checked again before every push and keep-alive (a
catalog lookup, no I/O): once its key is revoked, its session ended, or its role or tenant changed so
that it may no longer see what the stream shows, the stream ends, and a reconnect shows what it may see now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from switchyard_gateway.contracts import subjects
from switchyard_gateway.services.gateway.edge.errors import GatewayError

log = structlog.get_logger()

KEEPALIVE_S = 15.0
MAX_RECORDED = 100          # calls listed in one push; the token counts always include every call


class LiveUsage(msgspec.Struct, frozen=True):
    """What the stream shows of a usage event."""

    request_id: str
    tenant_id: str
    model: str
    api: str
    outcome: str
    occurred_at: str
    endpoint_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cache_hit: bool = False


_one = msgspec.json.Decoder(LiveUsage)
_many = msgspec.json.Decoder(list[LiveUsage])
_encode = msgspec.json.Encoder().encode


def decode_usage(data: bytes) -> list[LiveUsage]:
    """A usage message: one event, or a JSON array of them."""
    return _many.decode(data) if data[:1] == b"[" else [_one.decode(data)]


class Watcher:
    """One SSE client: its tenant filter, its running token counts, and what to push next. `scope`, asked before
    every push, says which tenant the caller may see now (None: every one), or raises GatewayError once the caller
    is no longer valid."""

    def __init__(self, tenant_id: str | None, tokens: dict[str, dict[str, int]],
                 scope: Callable[[], str | None] | None = None) -> None:
        self.tenant_id = tenant_id
        self.scope = scope
        self.tokens = tokens
        self.recorded: list[LiveUsage] = []
        self.wake = asyncio.Event()

    def add(self, events: list[LiveUsage]) -> None:
        mine = events if self.tenant_id is None else [e for e in events if e.tenant_id == self.tenant_id]
        if not mine:
            return
        for event in mine:
            per_model = self.tokens.setdefault(event.endpoint_id, {})
            per_model[event.model] = per_model.get(event.model, 0) + event.input_tokens + event.output_tokens
        self.recorded.extend(mine)
        del self.recorded[:-MAX_RECORDED]
        self.wake.set()


class UsageHub:
    """Fans usage events out to SSE watchers; subscribed to NATS only while anyone watches."""

    def __init__(self, nc: NATS, inflight: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.nc = nc
        self.inflight = inflight
        self.watchers: set[Watcher] = set()
        self._sub: Any = None
        self.received = 0

    async def watch(self, tenant_id: str | None, tokens: dict[str, dict[str, int]],
                    scope: Callable[[], str | None] | None = None) -> Watcher:
        watcher = Watcher(tenant_id, tokens, scope)
        self.watchers.add(watcher)
        if self._sub is None:
            self._sub = await self.nc.subscribe(f"{subjects.USAGE_RECORDED}.>", cb=self._on_message)
        return watcher

    async def leave(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        if not self.watchers and self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        try:
            events = decode_usage(msg.data)
        except msgspec.MsgspecError:
            log.warning("usage_stream.bad_message", subject=msg.subject)
            return
        self.received += len(events)
        for watcher in list(self.watchers):
            watcher.add(events)

    def snapshot(self, watcher: Watcher) -> bytes:
        """The next SSE event for a watcher; takes the calls recorded since the last one."""
        recorded, watcher.recorded = watcher.recorded, []
        body = {
            "usage_counts": self.inflight() if watcher.tenant_id is None else {},
            "token_usage_counts": watcher.tokens,
            "recorded": [msgspec.to_builtins(e) for e in recorded],
        }
        return b"data: " + _encode(body) + b"\n\n"

    @staticmethod
    def allowed(watcher: Watcher) -> bool:
        """Whether the watcher's caller still stands and may still see all that its stream shows."""
        if watcher.scope is None:
            return True
        try:
            return watcher.scope() == watcher.tenant_id
        except GatewayError:
            return False

    async def stream(self, watcher: Watcher) -> AsyncIterator[bytes]:
        """The SSE body: a snapshot now, then one whenever usage events arrive; a comment line keeps idle
        connections open. It ends, pushing nothing more, when the caller no longer passes `allowed`."""
        try:
            yield self.snapshot(watcher)
            while True:
                watcher.wake.clear()
                try:
                    await asyncio.wait_for(watcher.wake.wait(), KEEPALIVE_S)
                    woken = True
                except asyncio.TimeoutError:
                    woken = False
                if not self.allowed(watcher):
                    log.info("usage_stream.caller_no_longer_valid", tenant=watcher.tenant_id or "*")
                    return
                yield self.snapshot(watcher) if woken else b": keep-alive\n\n"
        finally:
            await self.leave(watcher)
