"""The gateway's reservation client: reserve a call's estimated tokens against every limit, in Valkey, first.

    GatewayError
    ├── QuotaExceeded    402 "Quota exceeded" with quota_type, limit, used, reset_time, suggested_models
    └── RateLimited      429 with limit_type, limit, used, reset_time; Retry-After and X-RateLimit-*
(each door renders them in its own shape: edge/errors.py)

Limits come from the LIMITS stream, folded locally, so a tenant with no limits costs
two dict lookups and no I/O. Otherwise one script call checks and charges every
counter that applies and records a hold under the request id; the quota service
settles the hold from the usage event in the log (a failed call settles to zero)
and releases it if no usage event ever comes. If Valkey cannot be reached the call
is let through (fail open) and counted by the settlement all the same.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import msgspec
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import KeyIssued, ModelRegistered
from switchyard_gateway.contracts.quota import Limits
from switchyard_gateway.events import StreamFold
from switchyard_gateway.quotas.limits import LimitsBook
from switchyard_gateway.quotas.periods import NANOS_PER_USD, Keys, iso_utc, key_prefix, usd_nanos
from switchyard_gateway.quotas.plan import Estimate, Planned, plan
from switchyard_gateway.quotas.scripts import RESERVE_SCRIPT, reserve_call
from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.resp import Valkey, ValkeyError
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.settings import Settings

log = structlog.get_logger()
SUGGESTED = 5


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


class Reservation(msgspec.Struct, frozen=True):
    """What a call holds until its usage event settles it: nothing for the proxy to do."""

    request_id: str
    model_id: str
    tokens: int
    nanos: int


class LimitsFeed:
    """The LIMITS stream folded into a LimitsBook: replayed from its start, then followed."""

    def __init__(self) -> None:
        self.book = LimitsBook()
        self._feed = StreamFold(subjects.STREAM_LIMITS, self.book.apply)

    async def start(self, nc: NATS, timeout_s: float) -> None:
        await self._feed.start(nc, timeout_s)

    async def wait_for(self, event_id: str, timeout_s: float = 5.0) -> bool:
        """Wait until an event this gateway asked for is folded in (read-your-writes)."""
        return await self._feed.wait_for([event_id], timeout_s)

    async def stop(self) -> None:
        await self._feed.stop()


class QuotaClient:
    """Reserve before dispatch. `reserve` is the one awaited call on the hot path."""

    def __init__(self, catalog: Catalog, fallbacks: Fallbacks, feed: LimitsFeed, valkey: Valkey, keys: Keys,
                 estimator: TokenEstimator, hold_s: float, timeout_s: float = 1.0) -> None:
        self.catalog, self.fallbacks = catalog, fallbacks
        self.feed, self.valkey, self.keys = feed, valkey, keys
        self.estimator, self.hold_s, self.timeout_s = estimator, hold_s, timeout_s
        self.unavailable = 0
        self._warned_at = 0.0
        self._plans: dict[tuple[str, str, str], tuple[int, float, list[Planned]]] = {}

    @classmethod
    async def start(cls, nc: NATS, settings: Settings, catalog: Catalog, fallbacks: Fallbacks) -> QuotaClient:
        """Follow the LIMITS stream and open the Valkey connection (lazily, on the first reservation)."""
        feed = LimitsFeed()
        await feed.start(nc, settings.connect_timeout_s)
        estimator = await asyncio.get_running_loop().run_in_executor(None, TokenEstimator)
        keys = Keys(key_prefix(settings.quota_prefix, settings.database_url))
        return cls(catalog, fallbacks, feed, Valkey(settings.redis_url), keys, estimator, settings.quota_hold_s,
                   settings.quota_timeout_s)

    async def close(self) -> None:
        await self.feed.stop()
        await self.valkey.close()

    @property
    def book(self) -> LimitsBook:
        return self.feed.book

    async def reserve(self, *, request_id: str, key: KeyIssued, model: ModelRegistered,
                      body: bytes) -> Reservation | None:
        """Hold the call's estimated tokens (and cost, and one request) against every limit that applies.

        None when no limit applies (nothing held). Raises QuotaExceeded (402) or RateLimited (429).
        The hold settles from the call's usage event; nothing else is needed, whatever happens to the call.
        """
        tenant_id, model_id = key.tenant_id, model.model_id
        scopes = self.book.applicable(tenant_id, model_id)
        if scopes is None:
            return None
        default = scopes[1].default_max_tokens or scopes[0].default_max_tokens
        prompt, output = self.estimator.estimate(body, output=model.kind != "embedding", default_max_tokens=default)
        nanos = usd_nanos(prompt, output, *self.price(tenant_id, model))
        now = time.time()
        planned = self._plan(scopes, tenant_id, key.key_id, model_id, now)
        keys, args = reserve_call(self.keys, request_id, int((now + self.hold_s) * 1000),
                                  [item.counter for item in planned], {"t": prompt + output, "r": 1, "u": nanos})
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self.valkey.evalsha(RESERVE_SCRIPT.sha, RESERVE_SCRIPT.source, keys, args)
        except (ConnectionError, ValkeyError, TimeoutError) as exc:
            self._fail_open(exc, tenant_id)
            return None
        if result[0] == 1:
            return Reservation(request_id, model_id, prompt + output, nanos)
        raise self.refusal(planned[result[1] - 1], result[2], tenant_id, model_id)

    async def reserve_or_fallback(self, *, request_id: str, key: KeyIssued, model: ModelRegistered,
                                  body: bytes) -> tuple[ModelRegistered, Reservation | None]:
        """`reserve`, and over a quota (402) when the tenant enabled `fallback_on_quota`, reserve for the
        suggested models in turn instead. Returns the model to serve; raises the first refusal if none fits."""
        try:
            return model, await self.reserve(request_id=request_id, key=key, model=model, body=body)
        except QuotaExceeded as exc:
            tenant = self.catalog.tenants.get(key.tenant_id)
            if tenant is None or not tenant.fallback_on_quota:
                raise
            for candidate in exc.suggested_models:
                fallback = self.catalog.models.get(candidate)
                if fallback is None:
                    continue
                try:
                    return fallback, await self.reserve(request_id=request_id, key=key, model=fallback, body=body)
                except QuotaExceeded:
                    continue
            raise

    def _plan(self, scopes: tuple[Limits, Limits], tenant_id: str, key_id: str, model_id: str,
              now: float) -> list[Planned]:
        """The counters of a (tenant, key, model), remembered until the limits change or a period or
        rate window ends; amounts are filled in per call."""
        cache_key = (tenant_id, key_id, model_id)
        cached = self._plans.get(cache_key)
        if cached is not None and cached[0] == self.book.version and now < cached[1]:
            return cached[2]
        planned = plan(self.keys, scopes, self.book.timezone(tenant_id), tenant_id, key_id, model_id,
                       datetime.fromtimestamp(now, UTC), Estimate(0, 0))
        if len(self._plans) > 10_000:
            self._plans.clear()
        self._plans[cache_key] = (self.book.version, min(p.reset.timestamp() for p in planned), planned)
        return planned

    def refusal(self, item: Planned, used: int, tenant_id: str, model_id: str) -> GatewayError:
        """The error for the counter that would go over."""
        limit = item.counter.limit
        if item.rate:
            return RateLimited(item.quota_type, limit, used, item.reset)
        suggested = self.fallbacks.suggestions(tenant_id, model_id)[:SUGGESTED]
        if item.quota_type == "budget":
            return QuotaExceeded("budget", limit / NANOS_PER_USD, round(used / NANOS_PER_USD, 9), item.reset,
                                 suggested, item.model_id)
        return QuotaExceeded(item.quota_type, limit, used, item.reset, suggested, item.model_id)

    def price(self, tenant_id: str, model: ModelRegistered) -> tuple[float, float]:
        """USD per million input and output tokens: the tenant's assignment price, else the model's."""
        assignment = self.catalog.assignments.get(tenant_id, {}).get(model.model_id)
        inp, out = model.input_price_per_1m, model.output_price_per_1m
        if assignment is not None:
            inp = assignment.input_price_per_1m if assignment.input_price_per_1m is not None else inp
            out = assignment.output_price_per_1m if assignment.output_price_per_1m is not None else out
        return inp, out

    def _fail_open(self, exc: Exception, tenant_id: str) -> None:
        self.unavailable += 1
        now = time.monotonic()
        if now - self._warned_at > 10.0:
            self._warned_at = now
            log.warning("quota.unavailable_fail_open", tenant=tenant_id, error=str(exc) or type(exc).__name__,
                        calls_let_through=self.unavailable)
