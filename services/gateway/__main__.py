"""`python -m switchyard_gateway.services.gateway`: serve the gateway, one worker per core unless
SWITCHYARD_WORKERS says otherwise, from a lean main process (its workers build the app)."""

from pathlib import Path

from switchyard_gateway.kit.serve import run, worker_count
from switchyard_gateway.services.gateway.settings import Settings

settings = Settings.from_env()
if settings.http_server not in ("native", "granian"):
    raise SystemExit(f"SWITCHYARD_HTTP_SERVER must be 'native' or 'granian', not '{settings.http_server}'")
# RSGI, served by our own server by default: both measured fastest for the hot path (docs/performance.md)
run("switchyard_gateway.services.gateway.app:create_app", settings, interface="rsgi", websockets=True,
    workers=worker_count(settings.workers), name="gateway", slots_dir=Path(settings.spool_dir) / ".workers",
    server=settings.http_server)
