"""One way to retry: exponential backoff with a cap, for loops that must outlive an outage of what they need."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

T = TypeVar("T")
log = structlog.get_logger()

# What a dependency being away looks like: a refused or broken connection, a timeout, a server error.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
)


class Backoff:
    """Delays between attempts: `first_s`, then doubling up to `max_s`; `reset()` after a success."""

    __slots__ = ("first_s", "max_s", "next_s")

    def __init__(self, first_s: float = 0.2, max_s: float = 5.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.next_s = first_s

    def reset(self) -> None:
        self.next_s = self.first_s

    async def wait(self) -> None:
        """Sleep for the current delay, and double the next one (up to the cap)."""
        delay, self.next_s = self.next_s, min(self.next_s * 2, self.max_s)
        await asyncio.sleep(delay)


async def retry(
    attempt: Callable[[], Awaitable[T]], *, what: str | None, errors: tuple[type[BaseException], ...] = TRANSIENT,
    backoff: Backoff | None = None, deadline_s: float | None = None, **context: Any,
) -> T:
    """Await `attempt()` until it returns; each failure of one of `errors` is logged as `what` with the error
    (unless `what` is None) and retried after the backoff. With `deadline_s`, the last failure is raised once
    that much time passed."""
    backoff = backoff or Backoff()
    give_up_at = None if deadline_s is None else time.monotonic() + deadline_s
    while True:
        try:
            return await attempt()
        except errors as exc:
            honour_cancel()          # a cancellation turned into an error on the way (a query cancelled) still stops
            if give_up_at is not None and time.monotonic() >= give_up_at:
                raise
            if what is not None:
                log.warning(what, error=str(exc) or type(exc).__name__, retry_in_s=round(backoff.next_s, 2), **context)
            await backoff.wait()


def honour_cancel() -> None:
    """Raise CancelledError if the running task was asked to stop and something swallowed the request on the way
    (nats-py's publish does, mid-flush): a loop that catches errors calls this before it goes round again."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
