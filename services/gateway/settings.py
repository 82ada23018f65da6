"""The gateway's settings: the HTTP edge, upstream calls, auth, quota reservations and the response cache."""

from __future__ import annotations

from typing import ClassVar

from switchyard_gateway.kit.settings import ServiceSettings


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything the gateway reads from SWITCHYARD_* variables, beside what every service shares."""

    SECRETS: ClassVar[tuple[str, ...]] = ("api_key", "jwt_secret")

    max_body_bytes: int = 4 * 1024 * 1024
    max_output_tokens: int = 262_144      # bound on asked output tokens and context sizes when a model has none
    upstream_connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0    # an endpoint's answer must start by then (endpoints may set their own)
    upstream_pool_size: int = 512         # keep-alive connections per upstream host
    spool_dir: str = "./.switchyard/spool"    # the journals: <spool_dir>/<instance>/ (one per gateway instance)
    journal_fsync: bool = False           # fdatasync each journal batch (machine crashes); a crashed process loses
                                          # nothing written without it
    # auth
    auth_mode: str = "multi-tenant"       # "multi-tenant": registry keys and JWTs; "single-user": only api_key
    api_key: str = ""                     # single-user mode: the one key accepted (role admin, tenant "admin")
    jwt_secret: str = ""                  # multi-tenant mode: HS256 secret of JWT bearer tokens ("" = no JWTs)
    # quota reservations
    quota_prefix: str = ""                # Valkey key prefix of counters and reservations ("": sy:q:<database>:)
    quota_hold_s: float = 600.0           # a reservation never settled is released after this long
    quota_timeout_s: float = 1.0          # a reservation Valkey has not answered by then is "unavailable"
    quota_on_error: str = "open"          # Valkey unreachable or slow: "open" lets the call through, "closed" 503
    # response cache
    cache: str = "off"                    # "off", "embeddings", or "all" (non-streamed chat and completions too)
    cache_ttl_s: float = 3600.0           # how long an answer is kept
    cache_max_bytes: int = 1024 * 1024    # larger answers are not kept
    cache_timeout_s: float = 0.25         # a lookup Valkey has not answered by then is a miss
    cache_prefix: str = ""                # Valkey key prefix of cached answers ("": sy:c:<database>:)
    # failover
    retries_per_endpoint: int = 1         # retries of one endpoint (5xx, 429) before falling back to the next
    retry_base_ms: float = 50.0           # backoff: base * 2**attempt, with jitter, at most retry_max_ms
    retry_max_ms: float = 1000.0
    retry_after_max_s: float = 2.0        # honour an upstream Retry-After up to this; longer: next endpoint
    cap_wait_s: float = 5.0               # how long a call waits for a slot when every endpoint is at its cap
