"""The quota service's settings: where its counters live in Valkey."""

from __future__ import annotations

from switchyard_gateway.kit.settings import ServiceSettings


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything the quota service reads from SWITCHYARD_* variables, beside what every service shares."""

    quota_prefix: str = ""                # Valkey key prefix of counters and reservations ("": sy:q:<database>:)
