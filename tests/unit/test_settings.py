"""Settings come from SWITCHYARD_* variables only, with typed values and masked secrets."""

from __future__ import annotations

import pytest

from switchyard_gateway.kit.settings import ServiceSettings as Settings
from switchyard_gateway.kit.settings import SettingsError, url_list
from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings
from switchyard_gateway.services.metering.settings import Settings as MeteringSettings
from switchyard_gateway.services.registry.settings import Settings as RegistrySettings
from switchyard_gateway.services.router.settings import Settings as RouterSettings


def test_settings_read_prefixed_variables_with_types() -> None:
    s = Settings.from_env({"SWITCHYARD_PORT": "9000", "SWITCHYARD_CONNECT_TIMEOUT_S": "2.5",
                           "SWITCHYARD_LOG_JSON": "true", "PORT": "1", "SWITCHYARD_NATS_URL": "nats://h:1"})
    assert (s.port, s.connect_timeout_s, s.log_json, s.nats_url) == (9000, 2.5, True, "nats://h:1")


@pytest.mark.parametrize(("value", "read"), [("true", True), ("On", True), (" yes ", True), ("1", True),
                                             ("false", False), ("OFF", False), ("no", False), ("0", False)])
def test_a_switch_takes_the_usual_words_for_on_and_off(value: str, read: bool) -> None:
    assert GatewaySettings.from_env({"SWITCHYARD_JOURNAL_FSYNC": value}).journal_fsync is read


@pytest.mark.parametrize("value", ["ture", "", "2", "enabled"])
def test_a_switch_set_to_anything_else_is_refused_not_read_as_off(value: str) -> None:
    with pytest.raises(SettingsError, match=f"SWITCHYARD_JOURNAL_FSYNC must be one of .*, not {value!r}"):
        GatewaySettings.from_env({"SWITCHYARD_JOURNAL_FSYNC": value})


@pytest.mark.parametrize("level", ["debug", "INFO", " Warning ", "error", "critical"])
def test_a_log_level_is_read_in_any_case(level: str) -> None:
    assert GatewaySettings.from_env({"SWITCHYARD_LOG_LEVEL": level}).log_level == level


def test_defaults_point_at_loopback() -> None:
    s = Settings.from_env({})
    assert "127.0.0.1" in s.nats_url and "127.0.0.1" in s.database_url and s.host == "127.0.0.1"


def test_redacted_masks_passwords_and_the_admin_key() -> None:
    s = RegistrySettings.from_env({"SWITCHYARD_DATABASE_URL": "postgresql://app:hunter2@db:5432/sy",
                                   "SWITCHYARD_ADMIN_KEY": "sy_admin_secret"})
    shown = repr(s.redacted())
    assert "hunter2" not in shown and "sy_admin_secret" not in shown and "app:***@db" in shown


def test_a_variable_may_name_a_file_holding_its_value(tmp_path) -> None:
    (tmp_path / "admin_key").write_text("sy_from_a_secret\n")
    (tmp_path / "port").write_text("9100")
    s = RegistrySettings.from_env({"SWITCHYARD_ADMIN_KEY_FILE": str(tmp_path / "admin_key"),
                           "SWITCHYARD_PORT_FILE": str(tmp_path / "port")})
    assert (s.admin_key, s.port) == ("sy_from_a_secret", 9100)      # one trailing newline dropped, types kept


def test_a_value_and_its_file_together_are_refused(tmp_path) -> None:
    (tmp_path / "key").write_text("one")
    with pytest.raises(SettingsError, match="both SWITCHYARD_ADMIN_KEY and SWITCHYARD_ADMIN_KEY_FILE"):
        RegistrySettings.from_env({"SWITCHYARD_ADMIN_KEY": "two", "SWITCHYARD_ADMIN_KEY_FILE": str(tmp_path / "key")})


def test_an_unreadable_secret_file_names_the_variable_and_path(tmp_path) -> None:
    with pytest.raises(SettingsError, match=r"SWITCHYARD_JWT_SECRET_FILE: cannot read .*/missing"):
        GatewaySettings.from_env({"SWITCHYARD_JWT_SECRET_FILE": str(tmp_path / "missing")})


def test_database_password_from_a_file_joins_the_url_and_is_masked(tmp_path) -> None:
    (tmp_path / "db_password").write_text("p@ss/wörd\n")
    s = Settings.from_env({"SWITCHYARD_DATABASE_URL": "postgresql://switchyard@postgres:5432/switchyard",
                           "SWITCHYARD_DATABASE_PASSWORD_FILE": str(tmp_path / "db_password")})
    assert s.database_url == "postgresql://switchyard:p%40ss%2Fw%C3%B6rd@postgres:5432/switchyard"
    shown = repr(s.redacted())
    assert "p%40ss" not in shown and "p@ss" not in shown and "switchyard:***@postgres" in shown


def test_nats_password_from_a_file_joins_every_server_of_the_url_and_is_masked(tmp_path) -> None:
    (tmp_path / "nats_password").write_text("n@ts/pässword\n")
    s = Settings.from_env({"SWITCHYARD_NATS_URL": "nats://switchyard@nats-1:4222, switchyard@nats-2:4222",
                           "SWITCHYARD_NATS_PASSWORD_FILE": str(tmp_path / "nats_password")})
    assert s.nats_servers == ["nats://switchyard:n%40ts%2Fp%C3%A4ssword@nats-1:4222",
                              "nats://switchyard:n%40ts%2Fp%C3%A4ssword@nats-2:4222"]
    shown = repr(s.redacted())
    assert "n%40ts" not in shown and "n@ts" not in shown and shown.count("switchyard:***@") == 2


def test_nats_url_may_list_a_clusters_servers() -> None:
    s = Settings.from_env({"SWITCHYARD_NATS_URL": "nats://nats-1:4222, nats-2:4222,nats://u:pw@nats-3:4222,"})
    assert s.nats_servers == ["nats://nats-1:4222", "nats://nats-2:4222", "nats://u:pw@nats-3:4222"]
    assert s.redacted()["nats_url"] == "nats://nats-1:4222, nats-2:4222,nats://u:***@nats-3:4222,"
    with pytest.raises(SettingsError):
        url_list(" , ")


def test_each_service_reads_only_its_own_fields() -> None:
    env = {"SWITCHYARD_CACHE": "all", "SWITCHYARD_BREAKER_FAILURES": "9", "SWITCHYARD_INGEST_BATCH": "7",
           "SWITCHYARD_PORT": "9001"}
    gateway, router, metering = (GatewaySettings.from_env(env), RouterSettings.from_env(env),
                                 MeteringSettings.from_env(env))
    assert (gateway.cache, gateway.port, router.breaker_failures, metering.ingest_batch) == ("all", 9001, 9, 7)
    assert not hasattr(gateway, "breaker_failures") and not hasattr(router, "cache")
    assert not hasattr(Settings.from_env(env), "ingest_batch")


def test_gateway_settings_mask_the_single_user_key_and_the_jwt_secret() -> None:
    s = GatewaySettings.from_env({"SWITCHYARD_API_KEY": "the-one-key",
                                  "SWITCHYARD_JWT_SECRET": "hs256-secret-of-at-least-32-bytes"})
    shown = repr(s.redacted())
    assert "the-one-key" not in shown and "hs256-secret" not in shown and s.api_key == "the-one-key"


@pytest.mark.parametrize("weak", ["changeme", "x" * 31, "é" * 15])
def test_a_jwt_secret_shorter_than_32_bytes_is_refused_naming_the_setting(weak: str) -> None:
    """A short HS256 secret is found offline from any token it signed (a member's own), and with it any token can
    be minted, an admin's too: the gateway must not start with one."""
    with pytest.raises(SettingsError, match=r"^SWITCHYARD_JWT_SECRET must be at least 32 bytes"):
        GatewaySettings.from_env({"SWITCHYARD_JWT_SECRET": weak})
    assert GatewaySettings.from_env({"SWITCHYARD_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32
    assert GatewaySettings.from_env({"SWITCHYARD_AUTH_MODE": "single_user", "SWITCHYARD_API_KEY": "the-one-key",
                                     "SWITCHYARD_JWT_SECRET": weak}), "single-user mode reads no JWTs"


@pytest.mark.parametrize(("service", "variable", "value", "says"), [
    ("gateway", "SWITCHYARD_HTTP_SERVER", "nginx", "SWITCHYARD_HTTP_SERVER must be 'native' or 'granian'"),
    ("gateway", "SWITCHYARD_HTTP_BODY_TIMEOUT_S", "0", "SWITCHYARD_HTTP_BODY_TIMEOUT_S must be a number of seconds"),
    ("gateway", "SWITCHYARD_HTTP_HEAD_TIMEOUT_S", "-5",
     "SWITCHYARD_HTTP_HEAD_TIMEOUT_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_HTTP_KEEP_ALIVE_S", "nan",
     "SWITCHYARD_HTTP_KEEP_ALIVE_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_HTTP_BODY_TIMEOUT_S", "inf",
     "SWITCHYARD_HTTP_BODY_TIMEOUT_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_IMAGE_TOKENS", "-1", "SWITCHYARD_IMAGE_TOKENS must be a whole number of tokens, 0 or more"),
    ("gateway", "SWITCHYARD_QUOTA_HOLD_S", "0", "SWITCHYARD_QUOTA_HOLD_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_MAX_ANSWER_BYTES", "10", "SWITCHYARD_MAX_ANSWER_BYTES must be a number of bytes, at least 1024"),
    ("gateway", "SWITCHYARD_HTTP_MAX_CONNECTIONS", "-3",
     "SWITCHYARD_HTTP_MAX_CONNECTIONS must be a whole number of connections, 0 (the default"),
    ("gateway", "SWITCHYARD_HTTP_KEEP_ALIVE_S", "soon", "SWITCHYARD_HTTP_KEEP_ALIVE_S must be a number, not 'soon'"),
    ("gateway", "SWITCHYARD_JWT_SECRET", "changeme", "SWITCHYARD_JWT_SECRET must be at least 32 bytes, not 8"),
    ("metering", "SWITCHYARD_INGEST_BATCH", "lots", "SWITCHYARD_INGEST_BATCH must be a whole number, not 'lots'"),
    ("metering", "SWITCHYARD_LOG_FEED", "ture", "SWITCHYARD_LOG_FEED must be one of true, 1, yes, on, false, 0, no, off"),
    ("router", "SWITCHYARD_BREAKER_PROBE_COOL_DOWN_S", "nan",
     "SWITCHYARD_BREAKER_PROBE_COOL_DOWN_S must be a number of seconds above 0"),
    ("router", "SWITCHYARD_PROBE_INTERVAL_S", "0", "SWITCHYARD_PROBE_INTERVAL_S must be a number of seconds above 0"),
    ("router", "SWITCHYARD_BREAKER_ERROR_RATIO", "1.5", "SWITCHYARD_BREAKER_ERROR_RATIO must be above 0 and at most 1"),
    ("router", "SWITCHYARD_BREAKER_FAILURES", "0", "SWITCHYARD_BREAKER_FAILURES must be at least 1"),
    ("gateway", "SWITCHYARD_USAGE_STALL_S", "nan", "SWITCHYARD_USAGE_STALL_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_WS_MESSAGE_TIMEOUT_S", "nan",
     "SWITCHYARD_WS_MESSAGE_TIMEOUT_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_FIRST_BYTE_TIMEOUT_S", "0",
     "SWITCHYARD_FIRST_BYTE_TIMEOUT_S must be a number of seconds above 0"),
    ("gateway", "SWITCHYARD_RETRY_BASE_MS", "-50", "SWITCHYARD_RETRY_BASE_MS must be a finite number, 0 or more"),
    ("gateway", "SWITCHYARD_CAP_WAIT_S", "inf", "SWITCHYARD_CAP_WAIT_S must be a finite number, 0 or more"),
    ("gateway", "SWITCHYARD_UPSTREAM_POOL_SIZE", "-2", "SWITCHYARD_UPSTREAM_POOL_SIZE must be at least 1, not -2"),
    ("metering", "SWITCHYARD_INGEST_LINGER_S", "nan", "SWITCHYARD_INGEST_LINGER_S must be a finite number, 0 or more"),
    ("quota", "SWITCHYARD_REQUEST_TIMEOUT_S", "0", "SWITCHYARD_REQUEST_TIMEOUT_S must be a number of seconds above 0"),
    ("registry", "SWITCHYARD_PASSWORD_HASH_CONCURRENCY", "0",
     "SWITCHYARD_PASSWORD_HASH_CONCURRENCY must be at least 1"),
    ("registry", "SWITCHYARD_STREAM_REPLICAS", "-1", "SWITCHYARD_STREAM_REPLICAS must be a whole number, 0 or more"),
    ("gateway", "SWITCHYARD_LOG_LEVEL", "bogus",
     "SWITCHYARD_LOG_LEVEL must be one of debug, info, warning, error, critical, not 'bogus'"),
    ("quota", "SWITCHYARD_LOG_LEVEL", "verbose", "SWITCHYARD_LOG_LEVEL must be one of debug, info, warning"),
    ("gateway", "SWITCHYARD_CACHE", "bogus", "SWITCHYARD_CACHE must be one of off, embeddings, all, not 'bogus'"),
    ("gateway", "SWITCHYARD_AUTH_MODE", "bogus", "SWITCHYARD_AUTH_MODE must be one of multi-tenant, "),
    ("gateway", "SWITCHYARD_QUOTA_ON_ERROR", "bogus", "SWITCHYARD_QUOTA_ON_ERROR must be one of open, closed"),
    ("gateway", "SWITCHYARD_METRICS_AUTH", "members", "SWITCHYARD_METRICS_AUTH must be one of open, admin"),
    ("gateway", "SWITCHYARD_AUTH_MODE", "single-user", "single-user mode needs SWITCHYARD_API_KEY"),
    ("metering", "SWITCHYARD_INGEST_BATCH", "0", "SWITCHYARD_INGEST_BATCH must be at least 1, not 0"),
    ("gateway", "SWITCHYARD_UPSTREAM_POOL_SIZE", "0", "SWITCHYARD_UPSTREAM_POOL_SIZE must be at least 1, not 0"),
    ("gateway", "SWITCHYARD_WS_MAX_IN_FLIGHT", "0", "SWITCHYARD_WS_MAX_IN_FLIGHT must be at least 1, not 0"),
    ("gateway", "SWITCHYARD_WS_MAX_CONNECTIONS", "0", "SWITCHYARD_WS_MAX_CONNECTIONS must be at least 1, not 0"),
    ("router", "SWITCHYARD_PROBE_CONCURRENCY", "0", "SWITCHYARD_PROBE_CONCURRENCY must be at least 1, not 0"),
])
def test_a_service_refuses_a_bad_setting_in_one_line_before_it_listens(service: str, variable: str, value: str,
                                                                       says: str) -> None:
    import os
    import subprocess
    import sys

    from switchyard_gateway.kit.stack_proc import pick_free_port

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
           "SWITCHYARD_PORT": str(pick_free_port(set())), variable: value}
    done = subprocess.run([sys.executable, "-m", f"switchyard_gateway.services.{service}"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stderr[-500:]
    assert done.stderr.count(f"switchyard: {says}") == 1 and "Traceback" not in done.stderr, done.stderr[-500:]
