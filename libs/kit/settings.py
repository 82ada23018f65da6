"""What every service's settings share, and the one way they are read from SWITCHYARD_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import msgspec

ENV_PREFIX = "SWITCHYARD_"


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the infrastructure is and how a service presents itself; each service subclasses it with its own
    fields (`services/<name>/settings.py`). Defaults point at loopback."""

    SECRETS: ClassVar[tuple[str, ...]] = ()    # fields masked by `redacted()`

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchyard"
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_json: bool | None = None          # None: JSON when stderr is not a tty
    instance: str = ""                    # distinguishes replicas in logs and consumer names
    connect_timeout_s: float = 30.0       # how long start-up waits for NATS / Postgres
    request_timeout_s: float = 5.0        # NATS request/reply deadline
    stream_replicas: int = 1              # JetStream replicas (3 in the scaled-out compose)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Self:
        """Build settings from SWITCHYARD_* variables (this class's fields only); others are ignored."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, field_type in _field_types(cls).items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _parse(raw, field_type)
        values.update(overrides)
        return msgspec.convert(values, cls)

    def redacted(self) -> dict[str, object]:
        """The settings with secrets masked, fit for a log line or an admin response."""
        out = msgspec.structs.asdict(self)
        for secret in self.SECRETS:
            if out.get(secret):
                out[secret] = "***"
        for key in ("database_url", "redis_url", "nats_url"):
            out[key] = _mask_password(str(out[key]))
        return out


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type[ServiceSettings]) -> dict[str, Any]:
    types = _FIELD_TYPES.get(cls)
    if types is None:
        types = _FIELD_TYPES[cls] = {f.name: f.type for f in msgspec.structs.fields(cls)}
    return types


def _parse(raw: str, field_type: object) -> object:
    if field_type is int:
        return int(raw)
    if field_type is float:
        return float(raw)
    if field_type in (bool, bool | None):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
