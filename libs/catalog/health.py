"""Endpoint health as the router publishes it: the last probe and the breaker state, folded per endpoint.

The gateway routes with it (services/gateway/state/circuits.py); the router resumes its
breakers from it when it becomes the leader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.routing import CircuitChanged, ModelFacts, ProbeCompleted


@dataclass
class HealthView:
    """The last `ProbeCompleted` and `CircuitChanged` of every endpoint."""

    probes: dict[str, ProbeCompleted] = field(default_factory=dict)
    circuits: dict[str, CircuitChanged] = field(default_factory=dict)
    loaded: dict[str, frozenset[str]] = field(default_factory=dict)
    facts: dict[str, dict[str, ModelFacts]] = field(default_factory=dict)   # endpoint -> model -> what it says
    last_probe_at: datetime | None = None

    def apply(self, event: Event) -> bool:
        """Fold one routing event in; False for other families or an older event than the one held."""
        match event:
            case ProbeCompleted(endpoint_id=eid):
                held = self.probes.get(eid)
                if held is not None and held.occurred_at > event.occurred_at:
                    return False
                self.probes[eid] = event
                if event.ok:
                    self.loaded[eid] = frozenset(event.loaded)
                    self.facts[eid] = {f.model: f for f in event.facts}
                if self.last_probe_at is None or event.occurred_at > self.last_probe_at:
                    self.last_probe_at = event.occurred_at
                return True
            case CircuitChanged(endpoint_id=eid):
                held_circuit = self.circuits.get(eid)
                if held_circuit is not None and held_circuit.occurred_at > event.occurred_at:
                    return False
                self.circuits[eid] = event
                return True
        return False

    def state(self, endpoint_id: str) -> str:
        """closed | open | half_open as last published; unknown endpoints are closed."""
        circuit = self.circuits.get(endpoint_id)
        return circuit.state if circuit is not None else "closed"

    def health(self, endpoint_id: str) -> dict[str, object] | None:
        """The last probe of an endpoint for a person, or None if it was never probed."""
        probe = self.probes.get(endpoint_id)
        if probe is None:
            return None
        return {"ok": probe.ok, "latency_ms": round(probe.latency_ms, 3), "error": probe.error,
                "status": probe.status, "version": probe.version, "models": list(probe.models),
                "loaded": list(probe.loaded), "at": probe.occurred_at}
