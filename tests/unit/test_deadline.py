"""The hot path's timeout scope behaves as asyncio.timeout_at: TimeoutError at the deadline, nothing before it,
a cancellation from elsewhere left a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from switchyard_gateway.kit.deadline import Deadline


def scope(seconds: float) -> Deadline:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    return Deadline(loop, task, loop.time() + seconds)


async def test_work_past_the_deadline_raises_timeout_error_and_the_task_is_not_left_cancelled() -> None:
    with pytest.raises(TimeoutError):
        async with scope(0.01):
            await asyncio.sleep(5)
    assert asyncio.current_task().cancelling() == 0     # type: ignore[union-attr]
    await asyncio.sleep(0)                               # no stray cancellation arrives later


async def test_work_within_the_deadline_returns_and_no_timer_fires_afterwards() -> None:
    async with scope(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)


async def test_a_cleared_deadline_lets_slow_work_finish() -> None:
    async with scope(0.02) as deadline:
        deadline.clear()
        await asyncio.sleep(0.05)
    cleared = scope(0.01)
    cleared.clear()
    async with cleared:
        await asyncio.sleep(0.03)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def work() -> None:
        async with scope(5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
