"""A position that only moves forward, and waiting on it: how a caller learns that a follower got somewhere."""

from __future__ import annotations

import asyncio


class Watermark:
    """The furthest position reached so far (a log position, a stream sequence, a count of events).

    `advance(n)` moves it (never back); `await reach(n)` returns once it is at n or beyond. Callers
    and tests wait on a position instead of polling: `assert await follower.position.reach(p, 10)`.
    """

    __slots__ = ("value", "_waiters")

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<Watermark {self.value}>"

    def advance(self, value: int) -> None:
        """Move to `value` if that is further; wake whoever waits for a position now reached."""
        if value <= self.value:
            return
        self.value = value
        if not self._waiters:
            return
        still = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= value:
                waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._waiters = still

    async def reach(self, target: int, timeout_s: float | None = None) -> bool:
        """Wait until the position is at least `target`; False if `timeout_s` passed first."""
        if self.value >= target:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:
            await asyncio.wait_for(waiter, timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    async def beyond(self, seen: int, timeout_s: float | None = None) -> bool:
        """Wait until the position moves past `seen` (what the caller last looked at)."""
        return await self.reach(seen + 1, timeout_s)
