"""The router's knobs: how often it probes, when a breaker opens and how it recovers, how long a lease lasts."""

from __future__ import annotations

from typing import Any

import msgspec

from switchyard_gateway.services.router.settings import Settings


class RouterPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Defaults suit a handful of local model servers; every field can come from Settings (same name)."""

    probe_interval_s: float = 15.0        # between probes of one endpoint (new endpoints are probed at once)
    probe_open_interval_s: float = 1.0    # ... while its breaker is open or half-open, so recovery shows fast
    probe_timeout_s: float = 5.0          # per probe call
    probe_concurrency: int = 16           # endpoints probed at the same time
    breaker_failures: int = 5             # consecutive failed calls that open a breaker
    breaker_error_ratio: float = 0.5      # ... or this failed share of the calls in the window
    breaker_window_s: float = 30.0
    breaker_min_calls: int = 20           # the ratio counts only with at least this many calls in the window
    breaker_cool_down_s: float = 5.0      # open -> half-open; doubles each time a trial fails
    breaker_max_cool_down_s: float = 60.0
    breaker_probe_cool_down_s: float = 2.0  # ... but a successful probe ends it once it has lasted this long
    breaker_trial_calls: int = 2          # concurrent trial calls each gateway lets through while half-open
    breaker_successes: int = 2            # successful trials that close it again
    leader_ttl_s: float = 5.0             # a leader that stops renewing loses the lease after this
    warm_keep_alive: str = "30m"          # how long Ollama keeps a warmed model loaded (its keep_alive)
    warm_timeout_s: float = 120.0         # a warm-up call waits this long at most (loading can be slow)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RouterPolicy:
        """Take each knob from the router's Settings field of the same name."""
        values = {name: getattr(settings, name) for name in cls.__struct_fields__ if hasattr(settings, name)}
        return cls(**{**values, **overrides})
