"""`python -m switchyard_gateway.services.registry`: serve the registry from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import run, settings_of
from switchyard_gateway.services.registry.settings import Settings

run("switchyard_gateway.services.registry.app:create_app", settings_of(Settings))
