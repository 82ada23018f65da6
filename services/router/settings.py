"""The router's settings: probes, circuit breakers and the leader's lease (read into a RouterPolicy)."""

from __future__ import annotations

from switchyard_gateway.kit.settings import ServiceSettings


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything the router reads from SWITCHYARD_* variables, beside what every service shares."""

    probe_interval_s: float = 15.0
    probe_open_interval_s: float = 1.0    # probes of an endpoint whose breaker is open or half-open
    probe_timeout_s: float = 5.0
    probe_concurrency: int = 16
    breaker_failures: int = 5             # consecutive failures that open a breaker
    breaker_error_ratio: float = 0.5      # ... or this share of failed calls over breaker_window_s
    breaker_window_s: float = 30.0
    breaker_min_calls: int = 20           # calls in the window before the ratio counts
    breaker_cool_down_s: float = 5.0      # open -> half-open; doubles on each failed trial
    breaker_max_cool_down_s: float = 60.0
    breaker_probe_cool_down_s: float = 2.0  # a successful probe ends a cool-down once it has lasted this long
    breaker_trial_calls: int = 2          # concurrent trial calls while half-open
    breaker_successes: int = 2            # successful trials that close it
    leader_ttl_s: float = 5.0             # the probing router's lease
    warm_keep_alive: str = "30m"          # Ollama's keep_alive on warm-up calls
    warm_timeout_s: float = 120.0         # longest wait for one warm-up call
