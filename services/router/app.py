"""The router service: the control plane for routing (probes, discovery, circuit breakers; one leader acts)."""

from __future__ import annotations

from litestar import Litestar

from switchyard_gateway.kit.service import create_service_app
from switchyard_gateway.services.router import handlers
from switchyard_gateway.services.router.settings import Settings


def create_app(settings: Settings | None = None) -> Litestar:
    return create_service_app("router", settings or Settings.from_env(), handlers.start, database=False,
                              stop=handlers.stop)
