"""The metering service: the usage log, its projections, and usage queries."""

from __future__ import annotations

from litestar import Litestar

from switchyard_gateway.kit.service import create_service_app
from switchyard_gateway.services.metering import handlers
from switchyard_gateway.services.metering.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_service_app("metering", settings or Settings.from_env(), handlers.start)
