"""What a reservation tells the client: its refusals (402, 429, 503) and OpenAI's rate-limit headers.

    GatewayError
    ├── QuotaExceeded      402 "Quota exceeded" with quota_type, limit, used, reset_time, suggested_models
    ├── RateLimited        429 with limit_type, limit, used, reset_time; Retry-After and X-RateLimit-*
    └── QuotaUnavailable   503 `quota_unavailable`: limits could not be checked
(each door renders them in its own shape: edge/errors.py)
"""

from __future__ import annotations

import math
import time
from datetime import datetime

from switchyard_gateway.quotas.periods import iso_utc
from switchyard_gateway.quotas.plan import Planned
from switchyard_gateway.services.gateway.edge.errors import ApiError, GatewayError


class QuotaExceeded(GatewayError):
    """402: a token quota, request quota or budget would be exceeded by this call."""

    status, kind, code = 402, "insufficient_quota", "insufficient_quota"

    def __init__(self, quota_type: str, limit: float, used: float, reset: datetime,
                 suggested_models: list[str], model_id: str | None = None) -> None:
        super().__init__("Quota exceeded", details={
            "quota_type": quota_type, "limit": limit, "used": used, "reset_time": iso_utc(reset),
            "suggested_models": suggested_models})
        self.quota_type, self.limit, self.used, self.reset = quota_type, limit, used, reset
        self.suggested_models, self.model_id = suggested_models, model_id


class RateLimited(GatewayError):
    """429: a requests- or tokens-per-minute limit would be exceeded by this call."""

    status, code = 429, "rate_limit_exceeded"

    def __init__(self, limit_type: str, limit: int, used: int, reset: datetime,
                 now: float | None = None) -> None:
        # OpenAI's `type` says which budget ran out: "requests" or "tokens"
        super().__init__("Rate limit exceeded", kind="tokens" if limit_type.endswith("tpm") else "requests",
                         details={"limit_type": limit_type, "limit": limit, "used": used,
                                  "reset_time": iso_utc(reset)})
        self.limit_type, self.limit, self.used, self.reset = limit_type, limit, used, reset
        wait_s = max(1, math.ceil(reset.timestamp() - (now if now is not None else time.time())))
        self.headers = {
            "retry-after": str(wait_s), "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)), "x-ratelimit-reset": str(int(reset.timestamp())),
        }


class QuotaUnavailable(ApiError):
    """503: the quota store could not be asked (and the gateway fails closed), or answered with an error."""

    status = 503
    kind = "server_error"
    code = "quota_unavailable"


_HEADERS = {"r": ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
            "t": ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")}


def rate_headers(planned: list[Planned], values: list[int], now: float) -> tuple[tuple[str, str], ...]:
    """OpenAI's rate-limit headers from the counters after this call: per kind (requests, tokens) the limit
    with the least left, what is left and when its window or period resets."""
    tightest: dict[str, tuple[int, int, float]] = {}
    for item, value in zip(planned, values):
        counter = item.counter
        measure = counter.measure
        if measure == "u":
            continue
        left = counter.limit - int(value)
        best = tightest.get(measure)
        if best is None or left < best[1]:
            tightest[measure] = (counter.limit, left, item.reset_s)
    headers: list[tuple[str, str]] = []
    for measure, (limit, left, reset) in tightest.items():
        names = _HEADERS[measure]
        headers += ((names[0], str(limit)), (names[1], str(max(0, left))), (names[2], duration(reset - now)))
    return tuple(headers)


def duration(seconds: float) -> str:
    """A wait as OpenAI writes it: `20ms`, `59s`, `6m0s`, `3h2m5s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
