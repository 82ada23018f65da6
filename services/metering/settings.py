"""Metering's settings: how the usage follower batches what it ingests, and whether the log is fed to LOG."""

from __future__ import annotations

from switchyard_gateway.kit.settings import ServiceSettings


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything metering reads from SWITCHYARD_* variables, beside what every service shares."""

    ingest_batch: int = 1000               # JetStream messages per transaction at most (each may hold many events)
    ingest_linger_s: float = 0.25          # how long a batch waits for more messages after its first
    log_feed: bool = True                  # publish the log to LOG, where subscribers go live (replay works either way)
