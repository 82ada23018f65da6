"""`python -m switchyard_gateway.services.registry`: serve the registry from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import run, settings_of
from switchyard_gateway.services.registry.settings import Settings

settings = settings_of(Settings)
if settings.password_hash_concurrency < 1:          # no hash at a time: every sign-in and user change would wait
    raise SystemExit(f"switchyard: SWITCHYARD_PASSWORD_HASH_CONCURRENCY must be at least 1, "
                     f"not {settings.password_hash_concurrency}")
run("switchyard_gateway.services.registry.app:create_app", settings)
