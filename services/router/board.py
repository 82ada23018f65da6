"""Every endpoint's breaker, fed with call outcomes and probe results; the transitions they cause.

Only the leader folds (see `control`): one replica holds the counters, so two
replicas never disagree about a breaker. A new leader resumes each breaker from
the state last published on `ROUTING`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from prometheus_client import Counter, Gauge

from switchyard_gateway.contracts.events import CallAttempted
from switchyard_gateway.contracts.messages import CircuitView
from switchyard_gateway.contracts.routing import CircuitChanged, ProbeCompleted
from switchyard_gateway.services.router.breaker import FAILED_OUTCOMES, Breaker
from switchyard_gateway.services.router.policy import RouterPolicy

ATTEMPTS = Counter("switchyard_upstream_attempts_total", "Upstream call attempts by endpoint and outcome",
                   ["endpoint", "outcome"])
TRANSITIONS = Counter("switchyard_circuit_transitions_total", "Circuit breaker transitions by endpoint and state",
                      ["endpoint", "state"])
OPEN = Gauge("switchyard_circuits_open", "Endpoints whose breaker is open or half-open (leader only)")


class Board:
    def __init__(self, policy: RouterPolicy, router: str = "") -> None:
        self.policy = policy
        self.router = router
        self.breakers: dict[str, Breaker] = {}

    def breaker(self, endpoint_id: str) -> Breaker:
        found = self.breakers.get(endpoint_id)
        if found is None:
            found = self.breakers[endpoint_id] = Breaker(endpoint_id, self.policy, self.router)
        return found

    def fold_outcomes(self, attempts: Iterable[CallAttempted], known: set[str] | dict[str, object],
                      now: datetime) -> list[CircuitChanged]:
        """Call outcomes from the gateways; endpoints the registry does not know are ignored."""
        changes = []
        for attempt in attempts:
            if attempt.endpoint_id not in known:
                continue
            ATTEMPTS.labels(attempt.endpoint_id, attempt.outcome).inc()
            change = self.breaker(attempt.endpoint_id).record(attempt.outcome in FAILED_OUTCOMES, now,
                                                              unreachable=attempt.outcome == "refused")
            if change is not None:
                changes.append(self._count(change))
        return changes

    def fold_probe(self, probe: ProbeCompleted, now: datetime) -> CircuitChanged | None:
        change = self.breaker(probe.endpoint_id).probe(probe.ok, now)
        return self._count(change) if change is not None else None

    def tick(self, now: datetime) -> list[CircuitChanged]:
        """Breakers whose cool-down has passed turn half-open."""
        return [self._count(c) for b in self.breakers.values() if (c := b.tick(now)) is not None]

    def state(self, endpoint_id: str) -> str:
        """closed | open | half_open; an endpoint without a breaker yet is closed."""
        found = self.breakers.get(endpoint_id)
        return found.state if found is not None else "closed"

    def reset(self, endpoint_id: str, now: datetime) -> CircuitChanged:
        return self._count(self.breaker(endpoint_id).reset(now))

    def resume(self, published: dict[str, CircuitChanged]) -> None:
        """Start over from the states last published (on becoming the leader)."""
        self.breakers.clear()
        for endpoint_id, changed in published.items():
            self.breaker(endpoint_id).resume(changed)
        self._gauge()

    def forget(self, known: Iterable[str]) -> None:
        """Drop breakers of endpoints that were removed."""
        keep = set(known)
        for endpoint_id in [e for e in self.breakers if e not in keep]:
            del self.breakers[endpoint_id]

    def views(self, endpoint_ids: Iterable[str]) -> list[CircuitView]:
        """Every named endpoint's breaker; one without a breaker yet is closed."""
        return [self.breakers[e].view() if e in self.breakers else CircuitView(e, "closed")
                for e in sorted(endpoint_ids)]

    def _count(self, change: CircuitChanged) -> CircuitChanged:
        TRANSITIONS.labels(change.endpoint_id, change.state).inc()
        self._gauge()
        return change

    def _gauge(self) -> None:
        OPEN.set(sum(1 for b in self.breakers.values() if b.state != "closed"))
