"""`python -m switchyard_gateway.services.metering`: serve the metering from a lean main process (its workers build the app)."""

from switchyard_gateway.kit.serve import require_counts, run, settings_of
from switchyard_gateway.services.metering.settings import Settings

settings = settings_of(Settings)
require_counts(settings, ("ingest_batch",))         # batches of no message: the usage would never be ingested
run("switchyard_gateway.services.metering.app:create_app", settings)
