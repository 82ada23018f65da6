"""`kit.retry`: retried until it works, and a cancellation always stops it, even one an attempt turned into an error."""

from __future__ import annotations

import asyncio

import pytest

from switchyard_gateway.kit.retry import Backoff, retry


async def test_a_transient_failure_is_retried_until_the_attempt_works() -> None:
    tries = []

    async def attempt() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError("not yet")
        return "done"

    assert await retry(attempt, what=None, backoff=Backoff(0.001, 0.002)) == "done"
    assert len(tries) == 3


async def test_a_cancellation_an_attempt_turns_into_a_transient_error_still_stops_the_retry() -> None:
    """A driver may answer a cancelled query with an error of its own (a query cancelled by the server): the
    retry must not take that for an outage and go round again with the cancellation swallowed."""
    started = asyncio.Event()

    async def attempt() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ConnectionResetError("the query was cancelled") from None

    task = asyncio.create_task(retry(attempt, what=None, backoff=Backoff(0.001, 0.002)))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
