"""Every service's app builds in this process with warnings as errors: a route declared in a style Litestar
deprecates fails here, where a service started in a subprocess would only have printed it."""

from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest
import switchyard_gateway.services as services
from litestar import Litestar

SERVICES = sorted(m.name for m in pkgutil.iter_modules(services.__path__) if m.ispkg)


def test_every_service_is_covered() -> None:
    assert {"gateway", "metering", "quota", "registry", "router"} <= set(SERVICES)


@pytest.mark.parametrize("name", SERVICES)
def test_app_builds_without_a_warning(name: str) -> None:
    factory = importlib.import_module(f"switchyard_gateway.services.{name}.app").create_app
    settings = importlib.import_module(f"switchyard_gateway.services.{name}.settings").Settings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = factory(settings)
    app = getattr(built, "litestar", built)          # the gateway wraps its Litestar app in the RSGI bridge
    assert isinstance(app, Litestar)
    assert "/health" in {route.path for route in app.routes}
