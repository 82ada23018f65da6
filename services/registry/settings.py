"""The registry's settings: the operators' bootstrap key."""

from __future__ import annotations

from typing import ClassVar

from switchyard_gateway.kit.settings import ServiceSettings


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything the registry reads from SWITCHYARD_* variables, beside what every service shares."""

    SECRETS: ClassVar[tuple[str, ...]] = ("admin_key",)

    admin_key: str = ""                   # bootstrap admin key, role admin (tenant "admin"), issued at start
    registry_document: str = ""           # a switchyard.yaml applied at start (idempotently); problems stop the registry
    password_hash_concurrency: int = 2    # Argon2id hashes or checks at once (64 MiB each); the rest wait
