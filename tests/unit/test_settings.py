"""Settings come from SWITCHYARD_* variables only, with typed values and masked secrets."""

from __future__ import annotations

from switchyard_gateway.kit.settings import ServiceSettings as Settings
from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings
from switchyard_gateway.services.metering.settings import Settings as MeteringSettings
from switchyard_gateway.services.registry.settings import Settings as RegistrySettings
from switchyard_gateway.services.router.settings import Settings as RouterSettings


def test_settings_read_prefixed_variables_with_types() -> None:
    s = Settings.from_env({"SWITCHYARD_PORT": "9000", "SWITCHYARD_CONNECT_TIMEOUT_S": "2.5",
                           "SWITCHYARD_LOG_JSON": "true", "PORT": "1", "SWITCHYARD_NATS_URL": "nats://h:1"})
    assert (s.port, s.connect_timeout_s, s.log_json, s.nats_url) == (9000, 2.5, True, "nats://h:1")


def test_defaults_point_at_loopback() -> None:
    s = Settings.from_env({})
    assert "127.0.0.1" in s.nats_url and "127.0.0.1" in s.database_url and s.host == "127.0.0.1"


def test_redacted_masks_passwords_and_the_admin_key() -> None:
    s = RegistrySettings.from_env({"SWITCHYARD_DATABASE_URL": "postgresql://app:hunter2@db:5432/sy",
                                   "SWITCHYARD_ADMIN_KEY": "sy_admin_secret"})
    shown = repr(s.redacted())
    assert "hunter2" not in shown and "sy_admin_secret" not in shown and "app:***@db" in shown


def test_each_service_reads_only_its_own_fields() -> None:
    env = {"SWITCHYARD_CACHE": "all", "SWITCHYARD_BREAKER_FAILURES": "9", "SWITCHYARD_INGEST_BATCH": "7",
           "SWITCHYARD_PORT": "9001"}
    gateway, router, metering = (GatewaySettings.from_env(env), RouterSettings.from_env(env),
                                 MeteringSettings.from_env(env))
    assert (gateway.cache, gateway.port, router.breaker_failures, metering.ingest_batch) == ("all", 9001, 9, 7)
    assert not hasattr(gateway, "breaker_failures") and not hasattr(router, "cache")
    assert not hasattr(Settings.from_env(env), "ingest_batch")


def test_gateway_settings_mask_the_single_user_key_and_the_jwt_secret() -> None:
    s = GatewaySettings.from_env({"SWITCHYARD_API_KEY": "the-one-key", "SWITCHYARD_JWT_SECRET": "hs256-secret"})
    shown = repr(s.redacted())
    assert "the-one-key" not in shown and "hs256-secret" not in shown and s.api_key == "the-one-key"
