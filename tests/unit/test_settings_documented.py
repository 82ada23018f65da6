"""Every setting a service reads is named in the README, where an operator looks for it (not only in the code)."""

from __future__ import annotations

import re

import msgspec
import pytest

from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings
from switchyard_gateway.services.metering.settings import Settings as MeteringSettings
from switchyard_gateway.services.quota.settings import Settings as QuotaSettings
from switchyard_gateway.services.registry.settings import Settings as RegistrySettings
from switchyard_gateway.services.router.settings import Settings as RouterSettings
from tests.conftest import REPO

SET_BY_THE_SERVICE = {"WORKER"}         # the gateway gives each of its workers its number; nobody sets it


@pytest.mark.parametrize("settings", [GatewaySettings, MeteringSettings, QuotaSettings, RegistrySettings,
                                      RouterSettings], ids=lambda cls: cls.__module__.split(".")[-2])
def test_every_setting_is_named_in_the_readme(settings: type[msgspec.Struct]) -> None:
    readme = (REPO / "README.md").read_text()
    names = {field.name.upper() for field in msgspec.structs.fields(settings)} - SET_BY_THE_SERVICE
    assert sorted(n for n in names if not re.search(rf"`(SWITCHYARD_)?{n}[`=]", readme)) == []
