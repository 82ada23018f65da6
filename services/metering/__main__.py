"""`python -m switchyard_gateway.services.metering`: serve the metering from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import run, settings_of
from switchyard_gateway.services.metering.settings import Settings

run("switchyard_gateway.services.metering.app:create_app", settings_of(Settings))
