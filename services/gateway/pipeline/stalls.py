"""Which endpoints look stalled: an attempt has waited far longer than the endpoint usually takes to answer,
and the endpoint has answered nothing since that attempt began.

A hung model server (accepts, never answers) keeps its breaker closed until its attempts reach their
first-byte timeout (60 s by default), and a higher priority keeps drawing new calls to it meanwhile.
Routing ranks a stalled endpoint after every other ready one, so new calls go elsewhere while it is
stuck; it is not skipped (the only endpoint still gets the call) and its breaker hears nothing from here.
An endpoint that is merely slow is not stalled: its usual wait grows with it, and any answer it gives
clears the mark.
"""

from __future__ import annotations

import time

STALL_MIN_S = 5.0         # never stalled sooner: a cold model's first answer may take this long
STALL_FACTOR = 4.0        # ... nor before this many times the endpoint's usual wait for an answer to start
USUAL_WEIGHT = 0.2        # how much each new answer moves the usual wait (an exponential average)


class Stalls:
    """Attempts awaiting their answer's start, per endpoint (oldest first), and each endpoint's usual wait."""

    __slots__ = ("_waiting", "_answered_at", "_usual_s")

    def __init__(self) -> None:
        self._waiting: dict[str, dict[int, float]] = {}
        self._answered_at: dict[str, float] = {}
        self._usual_s: dict[str, float] = {}

    def begun(self, endpoint_id: str, attempt: object) -> None:
        """An attempt was sent to the endpoint."""
        waiting = self._waiting.get(endpoint_id)
        if waiting is None:
            waiting = self._waiting[endpoint_id] = {}
        waiting[id(attempt)] = time.monotonic()

    def answered(self, endpoint_id: str, attempt: object) -> None:
        """The endpoint's answer to the attempt started (its status line and headers came)."""
        now = time.monotonic()
        self._answered_at[endpoint_id] = now
        waiting = self._waiting.get(endpoint_id)
        started = waiting.pop(id(attempt), None) if waiting is not None else None
        if started is not None:
            usual = self._usual_s.get(endpoint_id)
            waited = now - started
            self._usual_s[endpoint_id] = waited if usual is None else usual + USUAL_WEIGHT * (waited - usual)

    def ended(self, endpoint_id: str, attempt: object) -> None:
        """The attempt is over, answered or not."""
        waiting = self._waiting.get(endpoint_id)
        if waiting:
            waiting.pop(id(attempt), None)

    def stalled(self, endpoint_id: str, now: float) -> bool:
        waiting = self._waiting.get(endpoint_id)
        if not waiting:
            return False
        oldest = next(iter(waiting.values()))       # attempts are added in time order
        if self._answered_at.get(endpoint_id, 0.0) >= oldest:
            return False
        return now - oldest > max(STALL_MIN_S, STALL_FACTOR * self._usual_s.get(endpoint_id, 0.0))

    def stalled_ids(self) -> list[str]:
        """Endpoints stalled now (for /metrics and the debug log)."""
        now = time.monotonic()
        return [endpoint_id for endpoint_id in self._waiting if self.stalled(endpoint_id, now)]
