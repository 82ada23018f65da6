"""Router's NATS entry points: fold call outcomes per endpoint (the input its circuit breakers will use)."""

from __future__ import annotations

from collections import Counter as Tally

from nats.aio.msg import Msg
from prometheus_client import Counter

from libs.contracts import subjects
from libs.contracts.codec import decoder
from libs.contracts.events import CallAttempted
from libs.kit.service import Deps

ATTEMPTS = Counter("switchyard_upstream_attempts_total", "Upstream call attempts by endpoint and outcome",
                   ["endpoint", "outcome"])
_decode = decoder(list[CallAttempted])


class OutcomeTally:
    """Per-endpoint counts of attempt outcomes since start."""

    def __init__(self) -> None:
        self.by_endpoint: dict[str, Tally[str]] = {}

    def fold(self, event: CallAttempted) -> None:
        self.by_endpoint.setdefault(event.endpoint_id, Tally())[event.outcome] += 1
        ATTEMPTS.labels(event.endpoint_id, event.outcome).inc()


async def start(deps: Deps) -> None:
    assert deps.nc is not None
    tally = OutcomeTally()
    deps.extra["tally"] = tally

    async def on_call_attempted(msg: Msg) -> None:
        for event in _decode.decode(msg.data):
            tally.fold(event)

    # A queue group: with several router replicas each outcome is folded once.
    await deps.nc.subscribe(f"{subjects.CALL_ATTEMPTED}.>", queue="router", cb=on_call_attempted)
