"""Settings shared by every service: the only place the environment is read.

Any variable may instead name a file holding its value (`SWITCHYARD_ADMIN_KEY_FILE=/run/secrets/admin_key`),
the way container secrets are mounted; giving both is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

ENV_PREFIX = "SWITCHYARD_"
FILE_SUFFIX = "_FILE"


class SettingsError(ValueError):
    """A variable could not be read: both it and its _FILE are set, or its file is unreadable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the infrastructure is and how a service presents itself. Defaults point at loopback."""

    nats_url: str = "nats://127.0.0.1:4222"     # one URL or a comma-separated list (a cluster's servers)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchyard"
    database_password: str = ""           # put into database_url when given (a secret kept apart from the URL)
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_json: bool | None = None          # None: JSON when stderr is not a tty
    instance: str = ""                    # distinguishes replicas in logs and consumer names
    connect_timeout_s: float = 30.0       # how long start-up waits for NATS / Postgres
    request_timeout_s: float = 5.0        # NATS request/reply deadline
    stream_replicas: int = 1              # JetStream replicas (3 in the scaled-out compose)
    # registry
    admin_key: str = ""                   # bootstrap admin key, role admin (tenant "admin")
    registry_document: str = ""           # a switchyard.yaml the registry applies at start (idempotently)
    # gateway
    max_body_bytes: int = 4 * 1024 * 1024
    upstream_connect_timeout_s: float = 5.0
    upstream_pool_size: int = 512
    spool_dir: str = "./.switchyard/spool"
    # auth (gateway)
    auth_mode: str = "multi-tenant"       # "multi-tenant": registry keys and JWTs; "single-user": only api_key
    api_key: str = ""                     # single-user mode: the one key accepted (role admin, tenant "admin")
    jwt_secret: str = ""                  # multi-tenant mode: HS256 secret of JWT bearer tokens ("" = no JWTs)
    # quota
    quota_prefix: str = ""                # Valkey key prefix of counters and reservations ("": sy:q:<database>:)
    quota_hold_s: float = 600.0           # a reservation never settled is released after this long
    quota_timeout_s: float = 1.0          # a reservation Valkey has not answered by then lets the call through
    # response cache (gateway)
    cache: str = "off"                    # "off", "embeddings", or "all" (non-streamed chat and completions too)
    cache_ttl_s: float = 3600.0           # how long an answer is kept
    cache_max_bytes: int = 1024 * 1024    # larger answers are not kept
    cache_timeout_s: float = 0.25         # a lookup Valkey has not answered by then is a miss
    cache_prefix: str = ""                # Valkey key prefix of cached answers ("": sy:c:<database>:)
    retries_per_endpoint: int = 1         # retries of one endpoint (5xx, 429) before falling back to the next
    retry_base_ms: float = 50.0           # backoff: base * 2**attempt, with jitter, at most retry_max_ms
    retry_max_ms: float = 1000.0
    retry_after_max_s: float = 2.0        # honour an upstream Retry-After up to this; longer: next endpoint
    cap_wait_s: float = 5.0               # how long a call waits for a slot when every endpoint is at its cap
    # router: probes and circuit breakers
    probe_interval_s: float = 15.0
    probe_timeout_s: float = 5.0
    probe_concurrency: int = 16
    breaker_failures: int = 5             # consecutive failures that open a breaker
    breaker_error_ratio: float = 0.5      # ... or this share of failed calls over breaker_window_s
    breaker_window_s: float = 30.0
    breaker_min_calls: int = 20           # calls in the window before the ratio counts
    breaker_cool_down_s: float = 5.0      # open -> half-open; doubles on each failed trial
    breaker_max_cool_down_s: float = 60.0
    breaker_trial_calls: int = 2          # concurrent trial calls while half-open
    breaker_successes: int = 2            # successful trials that close it
    leader_ttl_s: float = 5.0             # the probing router's lease
    # metering
    ingest_batch: int = 1000               # JetStream messages per transaction at most (each may hold many events)
    ingest_linger_s: float = 0.25          # how long a batch waits for more messages after its first

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from SWITCHYARD_* variables (or their _FILE twins); unknown variables are ignored."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, field_type in _FIELD_TYPES.items():
            raw = env_value(env, ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _parse(raw, field_type)
        values.update(overrides)
        if values.get("database_password"):
            values["database_url"] = with_password(str(values.get("database_url", cls.database_url)),
                                                   str(values["database_password"]))
        return msgspec.convert(values, cls)

    @property
    def nats_servers(self) -> list[str]:
        return url_list(self.nats_url)

    def redacted(self) -> dict[str, object]:
        """The settings with secrets masked, fit for a log line or `/api/config`."""
        out = msgspec.structs.asdict(self)
        for secret in ("admin_key", "api_key", "jwt_secret", "database_password"):
            if out.get(secret):
                out[secret] = "***"
        for key in ("database_url", "redis_url", "nats_url"):
            out[key] = mask_password(str(out[key]))
        return out


_FIELD_TYPES = {f.name: f.type for f in msgspec.structs.fields(Settings)}


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """The value of variable `name`, or the content of the file `name`_FILE names (one trailing newline
    dropped); None when neither is set."""
    path = env.get(name + FILE_SUFFIX)
    if path is None:
        return env.get(name)
    if name in env:
        raise SettingsError(f"both {name} and {name}{FILE_SUFFIX} are set; give one")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{name}{FILE_SUFFIX}: cannot read {path}: {exc.strerror or exc}") from None
    return text[:-1] if text.endswith("\n") else text


def url_list(value: str) -> list[str]:
    """The URLs of a comma-separated list (`nats://a:4222,nats://b:4222`), blanks dropped, nats:// added
    where no scheme is given."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise SettingsError(f"no URL in {value!r}")
    return [url if "://" in url else f"nats://{url}" for url in urls]


def with_password(url: str, password: str) -> str:
    """`url` with its password set to `password` (user kept; the password URL-quoted)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def _parse(raw: str, field_type: object) -> object:
    if field_type is int:
        return int(raw)
    if field_type is float:
        return float(raw)
    if field_type in (bool, bool | None):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def mask_password(url: str) -> str:
    """The URL (or each URL of a comma-separated list) with any password replaced, fit for logs and errors."""
    return ",".join(_mask_one(one) for one in url.split(","))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
