"""The sign-in guard in a real Valkey: attempts take their slot of the username's and the address's budgets
before any password is checked, failures make the next attempt wait, and slots come back when no check happened."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway.edge.login_guard import LoginGuard
from tests.conftest import wait_for


@pytest.fixture
async def guard(urls) -> AsyncIterator[LoginGuard]:
    guard = LoginGuard(Valkey(urls.redis_url), f"t:{uuid.uuid4().hex[:8]}:", user_failures=3, address_failures=5,
                       backoff_s=2.0, backoff_max_s=30.0, window_s=60.0, hold_s=1.0)
    yield guard
    await guard.close()


def address() -> str:
    return f"10.0.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


async def test_attempts_in_flight_take_the_budget_before_any_password_is_checked(guard: LoginGuard) -> None:
    begun = await asyncio.gather(*(guard.begin("alice", address()) for _ in range(20)))
    going = [attempt for attempt, wait_s in begun if wait_s == 0]
    assert len(going) == 3, "the username's budget, held by the checks in flight"
    assert all(wait_s >= 1 for _, wait_s in begun if wait_s > 0)
    other = await asyncio.gather(*(guard.begin(f"user-{i}", "10.9.9.9") for i in range(20)))
    assert sum(1 for _, wait_s in other if wait_s == 0) == 5, "the address's budget, across usernames"


async def test_the_budget_spent_lets_one_check_at_a_time_after_the_wait(guard: LoginGuard) -> None:
    for _ in range(3):
        attempt, wait_s = await guard.begin("bob", address())
        assert wait_s == 0
        last_wait = await guard.failed(attempt, "bob", address())
    assert last_wait == pytest.approx(2.0, abs=0.1)
    assert (await guard.begin("bob", address()))[1] > 0

    async def allowed() -> str | None:
        attempt, wait_s = await guard.begin("bob", address())
        return attempt if wait_s == 0 else None

    going = await wait_for(allowed, timeout_s=5, interval_s=0.1, what="the wait to pass")
    assert (await guard.begin("bob", address()))[1] > 0, "one check at a time once the budget is spent"
    assert await guard.failed(going, "bob", address()) == pytest.approx(4.0, abs=0.1), "the wait doubled"


async def test_an_unchecked_attempt_gives_its_slot_back_and_counts_as_no_failure(guard: LoginGuard) -> None:
    """The registry answering 503 (too many checks waiting) checked no password: the slot comes back, so a flood
    of refused checks neither locks the user out nor gets more than the budget checked at once."""
    for _ in range(4):
        begun = [await guard.begin("carol", address()) for _ in range(3)]
        assert all(wait_s == 0 for _, wait_s in begun)
        assert (await guard.begin("carol", address()))[1] > 0, "the budget is held while they are in flight"
        for attempt, _ in begun:
            await guard.unchecked(attempt, "carol", address())
    attempt, wait_s = await guard.begin("carol", address())
    assert wait_s == 0 and await guard.failed(attempt, "carol", address()) == 0, "one failure, not thirteen"


async def test_a_success_forgets_the_usernames_failures_but_not_the_addresses(guard: LoginGuard) -> None:
    here = address()
    for user in ("dave", "dave", "erin", "frank"):
        attempt, _ = await guard.begin(user, here)
        await guard.failed(attempt, user, here)
    attempt, wait_s = await guard.begin("dave", here)
    assert wait_s == 0
    await guard.succeeded(attempt, "dave", here)
    attempt, _ = await guard.begin("dave", address())
    assert await guard.failed(attempt, "dave", address()) == 0, "dave's failures were forgotten"
    attempt, _ = await guard.begin("gina", here)
    assert await guard.failed(attempt, "gina", here) == pytest.approx(2.0, abs=0.1), "the address's fifth failure"


async def test_a_slot_its_gateway_never_ends_comes_back_after_the_hold(guard: LoginGuard) -> None:
    for _ in range(3):
        assert (await guard.begin("hal", address()))[1] == 0           # a gateway that died mid-check
    assert (await guard.begin("hal", address()))[1] > 0

    async def free() -> bool:
        attempt, wait_s = await guard.begin("hal", address())
        return wait_s == 0

    await wait_for(free, timeout_s=5, interval_s=0.2, what="the held slots to come back")
