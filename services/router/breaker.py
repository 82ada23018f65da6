"""One endpoint's circuit breaker: a pure state machine over call and probe results and the clock.

    closed ──N consecutive failures, or error ratio over the window──▶ open
    open ──cool-down elapsed──▶ half_open          (the cool-down doubles each time, up to a cap)
    open ──a probe succeeds──▶ half_open           (once open 2 s, or at once after it was unreachable)
    half_open ──M successes──▶ closed
    half_open ──any failure──▶ open
    any ──reset──▶ closed

A probe only lists models, so its success says the server is up, not that calls work. So while
closed it does not wipe out a run of failed calls; while open it lets trial calls through once the
breaker has been open `breaker_probe_cool_down_s` (an endpoint that answers again gets traffic within
seconds, not after a cool-down doubled to a minute; at once if the server had been unreachable);
and while half-open it counts as a trial success only if the server itself had been unreachable
(a failed probe or a refused connection: that outage is over). An endpoint whose calls hang or fail
while its probes answer is closed by trial calls that succeed, never by probes; each failed trial
opens it again until the next probe.
Every move returns the `CircuitChanged` to publish; nothing else leaves this module.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

from switchyard_gateway.contracts.messages import CircuitView
from switchyard_gateway.contracts.routing import CircuitChanged, CircuitState
from switchyard_gateway.services.router.policy import RouterPolicy

# Call outcomes that count against an endpoint. A 4xx is the caller's fault: the endpoint answered.
FAILED_OUTCOMES = frozenset({"refused", "timeout", "http_5xx", "http_429", "cut", "error"})


class Breaker:
    def __init__(self, endpoint_id: str, policy: RouterPolicy, router: str = "") -> None:
        self.endpoint_id = endpoint_id
        self.policy = policy
        self.router = router
        self.state: CircuitState = "closed"
        self.since: datetime | None = None
        self.reason = ""
        self.consecutive = 0
        self.window: deque[tuple[float, bool]] = deque()   # (timestamp, failed)
        self.retry_at: datetime | None = None
        self.trial_successes = 0
        self.opened = 0                                    # times opened since it last closed
        self.unreachable = False                           # a probe failed or a connection was refused since closed

    def record(self, failed: bool, now: datetime, unreachable: bool = False) -> CircuitChanged | None:
        """Fold one call or probe result in (`unreachable`: it failed to connect at all); the transition it
        caused, if any."""
        self.unreachable = self.unreachable or unreachable
        match self.state:
            case "closed":
                self.window.append((now.timestamp(), failed))
                self._prune(now)
                if not failed:
                    self.consecutive = 0
                    return None
                self.consecutive += 1
                if self.consecutive >= self.policy.breaker_failures:
                    return self._open(now, "consecutive_failures")
                calls, failures = self.counts()
                if calls >= self.policy.breaker_min_calls and failures / calls >= self.policy.breaker_error_ratio:
                    return self._open(now, "error_ratio")
                return None
            case "half_open":
                if failed:
                    return self._open(now, "trial_failed")
                self.trial_successes += 1
                if self.trial_successes >= self.policy.breaker_successes:
                    return self._close(now, "trials_succeeded")
                return None
        return None   # open: results of calls that started before it opened change nothing

    def probe(self, ok: bool, now: datetime) -> CircuitChanged | None:
        """Fold a probe result in: a failure counts like a failed call; a success ends the cool-down while
        open (at once after the endpoint was unreachable, else once it has been open breaker_probe_cool_down_s),
        counts as a trial while half-open if the endpoint had been unreachable, and changes nothing while
        closed."""
        if not ok:
            return self.record(True, now, unreachable=True)
        if self.state == "half_open":
            return self.record(False, now) if self.unreachable else None
        if self.state == "open" and (self.unreachable or self.since is None or
                                     now >= self.since + timedelta(seconds=self.policy.breaker_probe_cool_down_s)):
            self.state, self.trial_successes, self.retry_at = "half_open", 0, None
            return self._changed(now, "open", "probe_succeeded")
        return None

    def tick(self, now: datetime) -> CircuitChanged | None:
        """Open past its cool-down turns half-open."""
        if self.state == "open" and self.retry_at is not None and now >= self.retry_at:
            previous = self.state
            self.state, self.trial_successes, self.retry_at = "half_open", 0, None
            return self._changed(now, previous, "cool_down")
        return None

    def reset(self, now: datetime) -> CircuitChanged:
        """Closed now, failures forgotten (an operator's decision)."""
        return self._close(now, "reset")

    def resume(self, changed: CircuitChanged) -> None:
        """Take up the state another router last published (on becoming the leader)."""
        self.state, self.since, self.reason = changed.state, changed.occurred_at, changed.reason
        self.retry_at = changed.retry_at
        self.consecutive = changed.failures if changed.state == "open" else 0
        self.opened = 1 if changed.state != "closed" else 0
        self.unreachable = changed.state != "closed"      # unknown: let a successful probe end the cool-down

    def counts(self) -> tuple[int, int]:
        """(calls, failed calls) in the error-ratio window."""
        return len(self.window), sum(1 for _, failed in self.window if failed)

    def view(self) -> CircuitView:
        calls, failed = self.counts()
        return CircuitView(self.endpoint_id, self.state, self.since, self.reason, self.retry_at, self.consecutive,
                           calls, failed, self.trial_successes, self.opened)

    def _prune(self, now: datetime) -> None:
        horizon = now.timestamp() - self.policy.breaker_window_s
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()

    def _open(self, now: datetime, reason: str) -> CircuitChanged:
        previous = self.state
        self.opened += 1
        cool_down = min(self.policy.breaker_max_cool_down_s, self.policy.breaker_cool_down_s * 2 ** (self.opened - 1))
        self.state, self.retry_at, self.trial_successes = "open", now + timedelta(seconds=cool_down), 0
        return self._changed(now, previous, reason)

    def _close(self, now: datetime, reason: str) -> CircuitChanged:
        previous = self.state
        self.state, self.retry_at, self.trial_successes, self.opened = "closed", None, 0, 0
        self.unreachable = False
        event = self._changed(now, previous, reason)
        self.consecutive = 0
        self.window.clear()
        return event

    def _changed(self, now: datetime, previous: CircuitState, reason: str) -> CircuitChanged:
        self.since, self.reason = now, reason
        calls, failed = self.counts()
        return CircuitChanged(
            endpoint_id=self.endpoint_id, state=self.state, previous=previous, reason=reason,
            failures=self.consecutive, calls=calls, error_ratio=round(failed / calls, 4) if calls else 0.0,
            retry_at=self.retry_at, trial_calls=self.policy.breaker_trial_calls, router=self.router,
            occurred_at=now,
        )
