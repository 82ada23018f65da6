"""A timeout scope told its loop and task: `asyncio.timeout_at` without looking either up per use.

`asyncio.timeout_at` finds the running loop and the current task each time it is entered (on
Linux each lookup is a getpid system call), which the gateway's hot path pays on every upstream
attempt. `Deadline` behaves the same way — when the loop's clock reaches `when`, the task is
cancelled and the scope raises TimeoutError in its place, unless someone else cancelled the task
too — with the loop and task given by the caller.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """`async with Deadline(loop, task, when):` as `async with asyncio.timeout_at(when):`; `clear()` as
    `reschedule(None)`."""

    __slots__ = ("_loop", "_task", "_when", "_handle", "_expired", "_cancelling")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], when: float) -> None:
        self._loop, self._task, self._when = loop, task, when
        self._expired = False
        self._cancelling = 0
        self._handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Deadline:
        self._cancelling = self._task.cancelling()
        if self._when != float("inf"):
            self._handle = self._loop.call_at(self._when, self._expire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.clear()
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def clear(self) -> None:
        """No deadline any more (what has already expired stays expired); before entering: none will be set."""
        self._when = float("inf")
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()
