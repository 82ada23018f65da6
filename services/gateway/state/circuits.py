"""The gateway's event-fed copy of endpoint health: breaker states and last probes from the ROUTING stream.

No request waits on NATS for it: an ordered consumer replays the last message of
every subject (`circuit.changed.v1.<endpoint>`, `probe.completed.v1.<endpoint>`),
then follows the stream. While a breaker is half-open each gateway lets a bounded
number of trial calls through at a time; if the router says nothing past an open
breaker's `retry_at`, the gateway treats it as half-open on its own.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.health import HealthView
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import Event
from switchyard_gateway.contracts.routing import CircuitChanged, ModelFacts, ProbeCompleted
from switchyard_gateway.events import StreamFold

DEFAULT_TRIAL_CALLS = 2
TRIAL_SLOT_S = 10.0                          # a trial slot nobody released frees itself after this
ROUTER_SILENT_S = timedelta(seconds=2.0)     # open past retry_at by this much: half-open without the router


class Circuits:
    def __init__(self) -> None:
        self.view = HealthView()
        self.feed = StreamFold(subjects.STREAM_ROUTING, self._fold, last_per_subject=True)
        self._trials: dict[str, list[float]] = {}       # endpoint -> expiry (monotonic) of each trial slot taken

    async def start(self, nc: NATS, timeout_s: float = 30.0) -> None:
        """Replay the last state of every endpoint, then follow."""
        await self.feed.start(nc, timeout_s)

    async def stop(self) -> None:
        await self.feed.stop()

    def _fold(self, event: Event) -> None:
        if self.view.apply(event) and isinstance(event, CircuitChanged):
            self._trials.pop(event.endpoint_id, None)   # a new state starts with no trials taken

    def state(self, endpoint_id: str) -> str:
        """closed | open | half_open; an endpoint never reported on is closed."""
        circuit = self.view.circuits.get(endpoint_id)
        if circuit is None or circuit.state == "closed":
            return "closed"
        if circuit.state == "open" and circuit.retry_at is not None \
                and datetime.now(UTC) >= circuit.retry_at + ROUTER_SILENT_S:
            return "half_open"
        return circuit.state

    def allows(self, endpoint_id: str) -> bool:
        """Whether a call may go to this endpoint now. Closed: yes; open: no; half-open: yes while fewer than
        the breaker's trial bound are in flight from this gateway — the call takes a slot, which
        `release(endpoint_id)` gives back when it ends (or which frees itself after TRIAL_SLOT_S)."""
        state = self.state(endpoint_id)
        if state != "half_open":
            return state == "closed"
        circuit = self.view.circuits.get(endpoint_id)
        bound = (circuit.trial_calls if circuit is not None else 0) or DEFAULT_TRIAL_CALLS
        clock = time.monotonic()
        slots = [t for t in self._trials.get(endpoint_id, ()) if t > clock]
        if len(slots) >= bound:
            self._trials[endpoint_id] = slots
            return False
        slots.append(clock + TRIAL_SLOT_S)
        self._trials[endpoint_id] = slots
        return True

    def release(self, endpoint_id: str) -> None:
        """A call that `allows` let through has ended; free its trial slot if it took one."""
        slots = self._trials.get(endpoint_id)
        if slots:
            slots.pop(0)

    def loaded(self, endpoint_id: str) -> frozenset[str]:
        """The models the last successful probe saw loaded (names without `:latest`); empty if unknown."""
        return self.view.loaded.get(endpoint_id, frozenset())

    def facts(self, endpoint_id: str, model: str) -> ModelFacts | None:
        """What the endpoint said of a model (by the name it serves it under) at its last probe; None if nothing."""
        return self.view.facts.get(endpoint_id, {}).get(model)

    def probe(self, endpoint_id: str) -> ProbeCompleted | None:
        """The endpoint's last probe as the ROUTING stream told it; None if never probed."""
        return self.view.probes.get(endpoint_id)

    def health(self, endpoint_id: str) -> dict[str, Any] | None:
        """The last probe: ok, latency_ms, error, status, version, models, loaded, at; None if never probed."""
        return self.view.health(endpoint_id)

    def describe(self, endpoint_id: str) -> dict[str, Any]:
        """State and health of one endpoint for the admin API."""
        circuit = self.view.circuits.get(endpoint_id)
        return {
            "endpoint_id": endpoint_id, "circuit": self.state(endpoint_id),
            "circuit_reason": circuit.reason if circuit is not None else "",
            "circuit_since": circuit.occurred_at if circuit is not None else None,
            "probe": self.health(endpoint_id),
        }

    @property
    def last_probe_at(self) -> datetime | None:
        return self.view.last_probe_at

    async def wait_for(self, event_ids: list[str], timeout_s: float = 5.0) -> bool:
        """Wait until routing events someone just published are folded in (read-your-writes)."""
        return await self.feed.wait_for(event_ids, timeout_s)
