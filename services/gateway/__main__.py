"""`python -m switchyard_gateway.services.gateway`: serve the gateway, one worker per core unless
SWITCHYARD_WORKERS says otherwise, from a lean main process (its workers build the app); one worker
is served by this process itself."""

import math
from pathlib import Path

from switchyard_gateway.kit.serve import require_counts, require_seconds, run, settings_of, worker_count
from switchyard_gateway.services.gateway.settings import Settings

settings = settings_of(Settings)
if settings.http_server not in ("native", "granian"):
    raise SystemExit(f"switchyard: SWITCHYARD_HTTP_SERVER must be 'native' or 'granian', not '{settings.http_server}'")
require_seconds(settings, ("http_head_timeout_s", "http_body_timeout_s", "http_keep_alive_s", "http_send_timeout_s",
                           "quota_hold_s", "quota_timeout_s", "upstream_connect_timeout_s", "first_byte_timeout_s",
                           "usage_stall_s", "access_token_ttl_s", "refresh_token_ttl_s", "login_window_s",
                           "cache_ttl_s", "cache_timeout_s", "ws_idle_timeout_s", "ws_message_timeout_s",
                           "warm_timeout_s"))
# none at a time: no upstream connection (every call fails), no WebSocket request or no socket at all
require_counts(settings, ("upstream_pool_size", "ws_max_in_flight", "ws_max_connections",
                           "ws_max_connections_per_tenant"))
if settings.max_answer_bytes < 1024:
    raise SystemExit(f"switchyard: SWITCHYARD_MAX_ANSWER_BYTES must be a number of bytes, at least 1024, "
                     f"not {settings.max_answer_bytes}")
if settings.http_max_connections < 0:
    raise SystemExit(f"switchyard: SWITCHYARD_HTTP_MAX_CONNECTIONS must be a whole number of connections, 0 (the "
                     f"default: 10,000, fewer if the open-file limit is lower) or more, "
                     f"not {settings.http_max_connections}")
if not (math.isfinite(settings.refresh_reuse_grace_s) and settings.refresh_reuse_grace_s >= 0):
    raise SystemExit(f"switchyard: SWITCHYARD_REFRESH_REUSE_GRACE_S must be a number of seconds, 0 (a refresh token "
                     f"presented twice ends its session at once) or more, not {settings.refresh_reuse_grace_s}")
if settings.image_tokens < 0:
    raise SystemExit(f"switchyard: SWITCHYARD_IMAGE_TOKENS must be a whole number of tokens, 0 or more, "
                     f"not {settings.image_tokens}")
# RSGI, served by our own server by default: both measured fastest for the hot path (docs/performance.md)
run("switchyard_gateway.services.gateway.app:create_app", settings, interface="rsgi", websockets=True,
    workers=worker_count(settings.workers), name="gateway", slots_dir=Path(settings.spool_dir) / ".workers",
    server=settings.http_server)
