"""What every service's settings share, and the one way they are read from SWITCHYARD_* variables.

Any variable may instead name a file holding its value (`SWITCHYARD_ADMIN_KEY_FILE=/run/secrets/admin_key`),
the way container secrets are mounted; giving both is an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec

ENV_PREFIX = "SWITCHYARD_"
FILE_SUFFIX = "_FILE"
TRUE_WORDS = ("true", "1", "yes", "on")          # what a switch (SWITCHYARD_JOURNAL_FSYNC, ...) may be set to
FALSE_WORDS = ("false", "0", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")   # SWITCHYARD_LOG_LEVEL's words, in any case


class SettingsError(ValueError):
    """A variable could not be read (both it and its _FILE are set, or its file is unreadable) or holds what it
    may not (a number that is none, a word not among its words)."""


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the infrastructure is and how a service presents itself; each service subclasses it with its own
    fields (`services/<name>/settings.py`). Defaults point at loopback."""

    SECRETS: ClassVar[tuple[str, ...]] = ()    # fields masked by `redacted()`

    nats_url: str = "nats://127.0.0.1:4222"     # one URL or a comma-separated list (a cluster's servers)
    nats_password: str = ""               # put into every server of nats_url when given (its user kept: nats://switchyard@...)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/switchyard"
    database_password: str = ""           # put into database_url when given (a secret kept apart from the URL)
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8080
    share_port_with: int = 0              # pid of the launcher whose other processes may listen on `port` too
                                          # (replicas of one stack); 0: the port must be free
    log_level: str = "info"
    log_json: bool | None = None          # None: JSON when stderr is not a tty
    instance: str = ""                    # distinguishes replicas in logs and consumer names
    connect_timeout_s: float = 30.0       # how long start-up waits for NATS / Postgres
    request_timeout_s: float = 5.0        # NATS request/reply deadline
    stream_replicas: int = 1              # JetStream replicas (3 in the scaled-out compose)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Self:
        """Build settings from SWITCHYARD_* variables or their _FILE twins (this class's fields only); others
        are ignored."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, field_type in _field_types(cls).items():
            raw = env_value(env, ENV_PREFIX + name.upper())
            if raw is not None:
                try:
                    values[name] = _parse(raw, field_type)
                except ValueError:              # only numbers and switches fail to parse; no secret is either
                    kind = ("a whole number" if field_type is int else "a number" if field_type is float
                            else f"one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
                    raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be {kind}, not {raw!r}") from None
        values.update(overrides)
        settings = msgspec.convert(values, cls)
        if settings.log_level.strip().lower() not in LOG_LEVELS:      # logging would raise it only once it logs
            raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                                f"not {settings.log_level!r}")
        if settings.database_password:
            settings = msgspec.structs.replace(
                settings, database_url=with_password(settings.database_url, settings.database_password))
        if settings.nats_password:
            settings = msgspec.structs.replace(settings, nats_url=",".join(
                with_password(url, settings.nats_password) for url in url_list(settings.nats_url)))
        return settings

    @property
    def nats_servers(self) -> list[str]:
        return url_list(self.nats_url)

    def redacted(self) -> dict[str, object]:
        """The settings with secrets masked, fit for a log line or an admin response."""
        out = msgspec.structs.asdict(self)
        for secret in ("database_password", "nats_password", *self.SECRETS):
            if out.get(secret):
                out[secret] = "***"
        for key in ("database_url", "redis_url", "nats_url"):
            out[key] = mask_password(str(out[key]))
        return out


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type[ServiceSettings]) -> dict[str, Any]:
    types = _FIELD_TYPES.get(cls)
    if types is None:
        types = _FIELD_TYPES[cls] = {f.name: f.type for f in msgspec.structs.fields(cls)}
    return types


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


def with_database(url: str, database: str) -> str:
    """A PostgreSQL URL naming another database on the same server (its host, a socket's included, kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{quote(database, safe='')}"))


def _parse(raw: str, field_type: object) -> object:
    if field_type is int:
        return int(raw)
    if field_type is float:
        return float(raw)
    if field_type in (bool, bool | None):
        word = raw.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(raw)
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
