"""The quota service: limits as events, counters in Valkey as a projection of the usage log."""

from __future__ import annotations

from litestar import Litestar

from switchyard_gateway.kit.service import create_service_app
from switchyard_gateway.services.quota import handlers
from switchyard_gateway.services.quota.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_service_app("quota", settings or Settings.from_env(), handlers.start, stop=handlers.stop)
