"""One throttle for warnings that may come at a great rate: once per kind in a while, with how many were held back."""

from __future__ import annotations

from switchyard_gateway.kit.logs import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_warning_is_said_once_a_while_and_then_says_how_many_were_held_back() -> None:
    clock = Clock()
    throttle = Throttle(10.0, clock=clock)
    assert throttle.due() == 0                            # the first time: said, nothing held back
    assert [throttle.due() for _ in range(5)] == [None] * 5
    clock.now += 9.99
    assert throttle.due() is None
    clock.now += 0.01
    assert throttle.due() == 6                            # said again, with the six held back meanwhile
    assert throttle.due() is None


def test_kinds_are_held_back_apart_and_a_flood_of_new_kinds_does_not_grow_it() -> None:
    clock = Clock()
    throttle = Throttle(10.0, kinds=3, clock=clock)
    assert throttle.due("valkey away") == 0
    assert throttle.due("nats slow consumer") == 0        # another kind is not held back by the first
    assert throttle.due("valkey away") is None
    for n in range(1000):
        throttle.due(f"kind {n}")
    assert len(throttle._said) <= 3                       # noqa: SLF001  remembered kinds stay bounded
