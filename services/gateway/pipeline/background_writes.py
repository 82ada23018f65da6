"""What the gateway's Valkey-backed keepers share: writes sent in the background, so no client waits for them, and
warnings of Valkey's failures at most one every WARN_EVERY_S (with how many were held back)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.resp import Valkey

log = structlog.get_logger()

WARN_EVERY_S = 30.0


class BackgroundWrites:
    """A Valkey connection, the writes under way on it, and a throttle on the warnings of its failures; `close`
    lets the writes under way finish (2 s at most) before the connection closes."""

    def __init__(self, valkey: Valkey) -> None:
        self.valkey = valkey
        self._writes: set[asyncio.Task[Any]] = set()
        self._warnings = Throttle(WARN_EVERY_S)

    def _in_background(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def close(self) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=2)
        await self.valkey.close()

    def _warn(self, what: str, exc: Exception) -> None:
        since = self._warnings.due()
        if since is not None:
            log.warning(what, error=str(exc) or type(exc).__name__, **({"repeated": since} if since else {}))
