"""The NATS client's asynchronous errors are logged once per kind in a while, with how many came since."""

from __future__ import annotations

import nats.errors
import structlog
from structlog.testing import capture_logs

from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.natsio import ErrorLog


def test_a_flood_of_one_error_is_one_line_then_a_count(monkeypatch) -> None:
    """A subscriber sending a million replay requests whose replies it never reads made metering log one line
    per message dropped: 134 MB in ten seconds."""
    # a logger of its own: a service run earlier in this process (open_runtime) may have cached the module's, which
    # capture_logs then cannot see
    monkeypatch.setattr(natsio, "log", structlog.get_logger())
    errors = ErrorLog(every_s=0.05)
    with capture_logs() as logged:
        for sid in range(10_000):
            errors.heard(str(nats.errors.SlowConsumerError(subject="metering.replay.v1", reply="", sid=sid,
                                                           sub=None)))
        errors.heard("nats: connection closed")                     # another kind is not held back
    assert [line["event"] for line in logged] == ["nats.error", "nats.error"]
    assert "slow consumer" in logged[0]["error"] and logged[1]["error"] == "nats: connection closed"
    import time
    time.sleep(0.06)
    with capture_logs() as later:
        errors.heard(str(nats.errors.SlowConsumerError(subject="metering.replay.v1", reply="", sid=1, sub=None)))
    assert len(later) == 1 and later[0]["repeated"] == 9_999
