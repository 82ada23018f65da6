"""The gateway's settings: the HTTP edge, upstream calls, auth and sign-in, quota reservations, the response cache,
the Responses door's kept items and WebSocket embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

from switchyard_gateway.kit.settings import ServiceSettings, SettingsError

JWT_SECRET_MIN_BYTES = 32             # HS256 wants a key as long as its hash (RFC 7518 3.2); a shorter one is guessed
# SWITCHYARD_AUTH_MODE's accepted spellings (the embeddings service's `multi_user` / `single_user` too)
AUTH_MODES = {"multi-tenant": "multi-tenant", "multi_tenant": "multi-tenant", "multi-user": "multi-tenant",
              "multi_user": "multi-tenant", "single-user": "single-user", "single_user": "single-user"}
CACHE_MODES = ("off", "embeddings", "all")
QUOTA_ON_ERROR = ("open", "closed")   # Valkey away: let the call through, or refuse it 503
METRICS_AUTH = ("open", "admin")     # who may read /metrics: anyone (a scraper without a key), or an operator


def jwt_secret_problem(secret: str) -> str | None:
    """Why a JWT secret may not sign or check tokens; None when it may ("" is no JWTs at all)."""
    size = len(secret.encode("utf-8", "surrogatepass"))
    if 0 < size < JWT_SECRET_MIN_BYTES:
        return (f"SWITCHYARD_JWT_SECRET must be at least {JWT_SECRET_MIN_BYTES} bytes, not {size}: a short secret is "
                "recovered offline from any token it signed (make one with `openssl rand -hex 32`)")
    return None


class Settings(ServiceSettings, frozen=True, kw_only=True):
    """Everything the gateway reads from SWITCHYARD_* variables, beside what every service shares."""

    SECRETS: ClassVar[tuple[str, ...]] = ("api_key", "jwt_secret")

    workers: int = 0                      # worker processes sharing the port, each with its own event-fed state and
                                          # journal; 0: one per core
    worker: int = 0                       # set in each worker when there are several: its slot, 1..workers
    http_server: str = "native"           # "native": our HTTP/1.1 server in each worker's loop (libs/http1/server.py);
                                          # "granian": granian's RSGI server (docs/performance.md compares them)
    http_head_timeout_s: float = 30.0    # native server: a request head must be whole this long after its first byte
    http_body_timeout_s: float = 60.0    # ... a body with no new byte this long is answered 408
    http_keep_alive_s: float = 75.0      # ... a connection idle this long between requests is closed
    http_send_timeout_s: float = 60.0    # ... a client that reads none of its unread answer this long is dropped
    http_max_connections: int = 0         # ... client connections one worker holds (0: 10,000, fewer if the open-file
                                          # limit is lower); one more closes the longest idle, or is answered 503
    max_body_bytes: int = 4 * 1024 * 1024
    max_answer_bytes: int = 128 * 1024 * 1024   # an upstream's whole (not streamed) answer larger is its failure
                                                # (502, the call moves on): a runaway one cannot take the memory
    max_output_tokens: int = 262_144      # bound on asked output tokens and context sizes when a model has none
    image_tokens: int = 1_600             # prompt tokens a reservation holds for each image a call sends (servers
                                          # bill images as prompt; 1,600 covers OpenAI's and Anthropic's largest)
    upstream_connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0    # an endpoint's answer must start by then (endpoints may set their own)
    upstream_pool_size: int = 512         # keep-alive connections per upstream host
    spool_dir: str = "./.switchyard/spool"    # the journals: <spool_dir>/<instance>/ (one per gateway instance)
    journal_fsync: bool = False           # fdatasync each journal batch (machine crashes); a crashed process loses
                                          # nothing written without it
    usage_stall_s: float = 60.0           # usage events parked this long (JetStream not taking them) make /health 503;
                                          # they wait in the journal meanwhile, nothing is lost
    access_log: bool = False              # one info line per call (`call.done`: tenant, model, endpoint, status,
                                          # latency, tokens, cache): for log-based monitoring; off, it costs nothing
    # auth
    auth_mode: str = "multi-tenant"       # "multi-tenant" (or "multi_user"): registry keys, JWTs and users;
                                          # "single-user" (or "single_user"): only api_key
    api_key: str = ""                     # single-user mode: the one key accepted (role admin, tenant "admin")
    jwt_secret: str = ""                  # multi-tenant mode: HS256 secret of JWT bearer tokens ("" = no JWTs), at
                                          # least JWT_SECRET_MIN_BYTES long
    jwt_issuer: str = "switchyard"        # the `iss` every accepted JWT carries, and sign-in's tokens say
    access_token_ttl_s: float = 900.0     # sign-in: an access token lives 15 minutes
    refresh_token_ttl_s: float = 7 * 86400.0   # and its session 7 days, unless ended (sign-out, a refresh token reused)
    refresh_reuse_grace_s: float = 10.0   # a refresh token presented again this soon after its first use gets the same
                                          # new pair (a client racing itself); later, its session ends (0: at once)
    # sign-in brute-force protection, counted in Valkey so that every gateway agrees
    login_user_failures: int = 5          # failed sign-ins of one username before it is made to wait
    login_address_failures: int = 20      # failed sign-ins from one address before it is made to wait
    login_backoff_s: float = 1.0          # the first wait; each further failure doubles it
    login_backoff_max_s: float = 900.0    # the longest wait
    login_window_s: float = 900.0         # failures older than this (counted from the last one) are forgotten
    login_prefix: str = ""                # Valkey key prefix of the counters ("": sy:a:<database>:)
    trust_forwarded_for: bool = False     # behind a proxy: the client address is X-Forwarded-For's last (the one
                                          # the proxy appended; the earlier ones are the client's to write)
    anonymous_tenant: str = ""            # trusted networks only: calls with no key act as a member of this tenant
    # browsers
    cors_origins: str = ""                # comma-separated origins allowed to call from a browser, or "*" ("": none)
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
    # the Responses door's kept items
    responses_store_ttl_s: float = 3600.0  # how long a Response's output items are kept for `item_reference`s to
                                           # name them (0: nothing is kept, `store` is answered false)
    # failover
    retries_per_endpoint: int = 1         # retries of one endpoint (5xx, 429) before falling back to the next
    retry_base_ms: float = 50.0           # backoff: base * 2**attempt, with jitter, at most retry_max_ms
    retry_max_ms: float = 1000.0
    retry_after_max_s: float = 2.0        # honour an upstream Retry-After up to this; longer: next endpoint
    cap_wait_s: float = 5.0               # how long a call waits for a slot when every endpoint is at its cap
    warm_timeout_s: float = 120.0         # the router's longest warm-up call (the same SWITCHYARD_WARM_TIMEOUT_S):
                                          # the warm-up API waits that long for each, and a margin
    metrics_auth: str = "open"            # who may read /metrics (METRICS_AUTH)
    # WebSocket embeddings (/ws)
    ws_max_in_flight: int = 16            # requests one socket may have unanswered; one more closes it (1013)
    ws_max_connections: int = 1024        # sockets this gateway holds at once; more are refused (503)
    ws_max_connections_per_tenant: int = 256    # sockets one tenant's callers hold at once; more are refused (429)
    ws_idle_timeout_s: float = 120.0      # a socket with nothing in flight and no message for this long is closed
    ws_message_timeout_s: float = 30.0    # a message begun must be whole this long after its first byte (1008)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Self:
        """The settings, or SettingsError naming the variable when a mode is none of its words or lacks its key (read
        only once the app is built, each worker would die of it) or the JWT secret is too short to be safe
        (single-user mode reads no JWTs, so there it is not looked at)."""
        settings = super().from_env(env, **overrides)
        mode = AUTH_MODES.get(settings.auth_mode.strip().lower())
        if mode is None:
            raise SettingsError(f"SWITCHYARD_AUTH_MODE must be one of {', '.join(AUTH_MODES)}, "
                                f"not {settings.auth_mode!r}")
        for name, words in (("cache", CACHE_MODES), ("quota_on_error", QUOTA_ON_ERROR),
                            ("metrics_auth", METRICS_AUTH)):
            if getattr(settings, name) not in words:
                raise SettingsError(f"SWITCHYARD_{name.upper()} must be one of {', '.join(words)}, "
                                    f"not {getattr(settings, name)!r}")
        if not 0 <= settings.responses_store_ttl_s < float("inf"):       # NaN too
            raise SettingsError("SWITCHYARD_RESPONSES_STORE_TTL_S must be a number of seconds, 0 or more (0: keep "
                                f"nothing), not {settings.responses_store_ttl_s!r}")
        if mode == "single-user" and not settings.api_key:
            raise SettingsError("single-user mode needs SWITCHYARD_API_KEY, the one key it accepts")
        if mode == "multi-tenant" and (problem := jwt_secret_problem(settings.jwt_secret)):
            raise SettingsError(problem)
        return settings
