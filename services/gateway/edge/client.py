"""Notice a client that disconnects while its call runs, and stop the call's work at once.

The RSGI protocol object has `client_disconnect()`, an awaitable that completes
when the client's connection closes. `ClientWatch` waits on it beside the call: if it
completes first, the task serving the call is cancelled, which closes the upstream
connection (so a real server stops generating) wherever the call was waiting: for a
slot, for the upstream's first byte, or between streamed chunks.

Watching costs a watcher per connection (under granian, measured: tens of microseconds of
latency per call), so it starts only once a call has run for `WATCH_AFTER_S`: a call
answered sooner never pays it, and a client that leaves is noticed that much later
at most. A streamed call notices sooner anyway, on its next write.
"""

from __future__ import annotations

import asyncio
from typing import Any

WATCH_AFTER_S = 0.05


class ClientWatch:
    """Cancels the current task when the client leaves; `fired` says it did. `stop()` before answering ends."""

    __slots__ = ("task", "proto", "future", "timer", "fired")

    def __init__(self, proto: Any, loop: asyncio.AbstractEventLoop | None = None,
                 after_s: float = WATCH_AFTER_S) -> None:
        self.fired = False
        self.proto = proto
        loop = loop or asyncio.get_running_loop()
        self.task = asyncio.current_task(loop)      # the loop given: no lookup of the running loop
        self.future: asyncio.Future[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        if self.task is not None:
            self.timer = loop.call_later(after_s, self._watch)

    def _watch(self) -> None:
        self.timer = None
        if self.task is not None:
            self.future = asyncio.ensure_future(self.proto.client_disconnect())
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
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
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
