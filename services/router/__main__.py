"""`python -m switchyard_gateway.services.router`: serve the router from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import require_counts, require_seconds, run, settings_of
from switchyard_gateway.services.router.settings import Settings

settings = settings_of(Settings)
# Its knobs feed timers and breakers: a NaN or a zero would crash or spin them long after start, so refuse now.
require_seconds(settings, ("probe_interval_s", "probe_open_interval_s", "probe_timeout_s", "breaker_window_s",
                           "breaker_cool_down_s", "breaker_max_cool_down_s", "breaker_probe_cool_down_s",
                           "leader_ttl_s", "warm_timeout_s"))
if not 0 < settings.breaker_error_ratio <= 1:
    raise SystemExit(f"switchyard: SWITCHYARD_BREAKER_ERROR_RATIO must be above 0 and at most 1, "
                     f"not {settings.breaker_error_ratio}")
require_counts(settings, ("probe_concurrency", "breaker_failures", "breaker_min_calls", "breaker_trial_calls",
                          "breaker_successes"))
run("switchyard_gateway.services.router.app:create_app", settings)
