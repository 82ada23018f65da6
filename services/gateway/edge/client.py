"""Notice a client that disconnects while its call runs, and stop the call's work at once.

granian's RSGI protocol object has `client_disconnect()`, an awaitable that completes
when the client's connection closes. `ClientWatch` waits on it beside the call: if it
completes first, the task serving the call is cancelled, which closes the upstream
connection (so a real server stops generating) wherever the call was waiting: for a
slot, for the upstream's first byte, or between streamed chunks.
"""

from __future__ import annotations

import asyncio
from typing import Any


class ClientWatch:
    """Cancels the current task when the client leaves; `fired` says it did. `stop()` before answering ends."""

    __slots__ = ("task", "future", "fired")

    def __init__(self, proto: Any) -> None:
        self.fired = False
        self.task = asyncio.current_task()
        self.future: asyncio.Future[Any] | None = None
        if self.task is not None:
            self.future = asyncio.ensure_future(proto.client_disconnect())
            self.future.add_done_callback(self._gone)

    def _gone(self, future: asyncio.Future[Any]) -> None:
        task = self.task
        if task is None or future.cancelled():
            return
        self.fired = True
        task.cancel("the client disconnected")

    def stop(self) -> None:
        """The call is done with its client: a disconnect from now on changes nothing."""
        self.task = None
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.cancel()

    def absorb(self) -> bool:
        """Inside `except CancelledError`: True (and the cancellation undone) if the client's leaving caused it."""
        if not self.fired:
            return False
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        return True
