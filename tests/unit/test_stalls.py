"""An endpoint is stalled only when an attempt has waited far past its usual wait and nothing has answered since."""

from __future__ import annotations

import pytest

from switchyard_gateway.services.gateway.pipeline import stalls
from switchyard_gateway.services.gateway.pipeline.stalls import STALL_FACTOR, STALL_MIN_S, Stalls


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(stalls.time, "monotonic", clock)
    return clock


def test_an_attempt_waiting_past_the_bound_with_nothing_answered_stalls_its_endpoint(clock: Clock) -> None:
    seen = Stalls()
    first, second = object(), object()
    seen.begun("a", first)
    clock.now += 1
    seen.begun("a", second)
    assert not seen.stalled("a", clock.now + STALL_MIN_S - 1.5)
    assert seen.stalled("a", clock.now + STALL_MIN_S) and seen.stalled_ids() == []   # ids: at the clock's now
    clock.now += STALL_MIN_S
    assert seen.stalled_ids() == ["a"] and not seen.stalled("b", clock.now)
    seen.ended("a", first)                      # the oldest gave up: the next one has not waited as long
    assert not seen.stalled("a", clock.now)


def test_any_answer_since_the_oldest_attempt_began_means_alive(clock: Clock) -> None:
    seen = Stalls()
    stuck, other = object(), object()
    seen.begun("a", stuck)
    seen.begun("a", other)
    clock.now += 1
    seen.answered("a", other)                   # a single-slot server finishing one call: alive, only busy
    assert not seen.stalled("a", clock.now + 60)


def test_a_slow_endpoint_is_judged_by_its_own_usual_wait(clock: Clock) -> None:
    seen = Stalls()
    for _ in range(5):                          # its answers usually start after 20 s
        attempt = object()
        seen.begun("slow", attempt)
        clock.now += 20
        seen.answered("slow", attempt)
        seen.ended("slow", attempt)
    clock.now += 1
    waiting = object()
    seen.begun("slow", waiting)
    assert not seen.stalled("slow", clock.now + 30)
    assert seen.stalled("slow", clock.now + STALL_FACTOR * 20 + 1)
