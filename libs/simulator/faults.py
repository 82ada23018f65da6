"""Which upstream calls fail: a counter-based, seeded choice, so a run repeats exactly."""

from __future__ import annotations

from switchyard_gateway.simulator.synth import splitmix64

_TWO_64 = float(1 << 64)


def fails(seed: int, serial: int, rate: float) -> bool:
    """Whether call number `serial` fails when a `rate` share of calls should.

    A rate of 0 never fails and 1 always does; in between, the same seed and serial
    always give the same answer, and about `rate` of all serials fail.
    """
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    draw = splitmix64(((seed & 0xFFFFFFFF) << 32) ^ serial) / _TWO_64
    return draw < rate
