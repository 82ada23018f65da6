"""`python -m switchyard_gateway.services.router`: serve the router from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import run, settings_of
from switchyard_gateway.services.router.settings import Settings

run("switchyard_gateway.services.router.app:create_app", settings_of(Settings))
