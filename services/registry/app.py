"""The registry service: providers, endpoints, models, tenants, assignments and keys."""

from __future__ import annotations

from litestar import Litestar

from switchyard_gateway.kit.service import create_service_app
from switchyard_gateway.services.registry import handlers
from switchyard_gateway.services.registry.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_service_app("registry", settings or Settings.from_env(), handlers.start)
