"""`python -m switchyard_gateway.services.quota`: serve the quota from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import run, settings_of
from switchyard_gateway.services.quota.settings import Settings

run("switchyard_gateway.services.quota.app:create_app", settings_of(Settings))
