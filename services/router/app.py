"""The router service: the control plane for routing (probes, discovery, circuit breakers; one leader acts)."""

from __future__ import annotations

from litestar import Litestar

from libs.kit.service import create_service_app, run
from libs.kit.settings import Settings
from services.router import handlers


def create_app(settings: Settings | None = None) -> Litestar:
    return create_service_app("router", settings or Settings.from_env(), handlers.start, database=False,
                              stop=handlers.stop)


def main() -> None:
    run("services.router.app:create_app", Settings.from_env())
