"""`python -m switchyard_gateway.services.registry`: serve the registry from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import require_counts, run, settings_of
from switchyard_gateway.services.registry.settings import Settings

settings = settings_of(Settings)
require_counts(settings, ("password_hash_concurrency",))   # no hash at a time: every sign-in would wait for ever
run("switchyard_gateway.services.registry.app:create_app", settings)
