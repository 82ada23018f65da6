"""The gateway's reservation client: hold a call's tokens against every limit, in Valkey, before it runs.

Its refusals (402 QuotaExceeded, 429 RateLimited, 503 QuotaUnavailable; each door renders them in its own
shape) and the rate-limit headers of an answer are in `quota_answers.py`.

Limits come from the LIMITS stream, folded locally, so a tenant with no limits costs
two dict lookups and no I/O. Otherwise one script call reads every counter that
applies, grants the call the output tokens all of them have room for (what the
client asked, else the limits' `default_max_tokens`, capped by what is left) and
charges the prompt plus that output: the reservation is a ceiling, and the proxy
sends it upstream as the call's `max_tokens`. The quota service settles the hold
from the usage event in the log (a failed call settles to zero) and releases it if
no usage event ever comes; a call whose client left is released at once (`release`).
If Valkey cannot be reached in time the call is let through with
`SWITCHYARD_QUOTA_ON_ERROR=open` (the default; counted by the settlement all the same,
and still held to the output it asked for) or refused with `closed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import KeyIssued, ModelRegistered
from switchyard_gateway.contracts.quota import Limits
from switchyard_gateway.events import StreamFold
from switchyard_gateway.kit.logs import Throttle
from switchyard_gateway.quotas.limits import LimitsBook
from switchyard_gateway.quotas.periods import NANOS_PER_USD, Keys, key_prefix, usd_nanos
from switchyard_gateway.quotas.plan import Estimate, Planned, plan
from switchyard_gateway.quotas.scripts import MEASURES, RELEASE_SCRIPT, RESERVE_SCRIPT, reserve_call
from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.resp import Framed, Valkey, ValkeyError
from switchyard_gateway.services.gateway import metrics
from switchyard_gateway.services.gateway.edge.errors import GatewayError
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.quota_answers import (
    QuotaExceeded, QuotaUnavailable, RateLimited, rate_headers,
)
from switchyard_gateway.services.gateway.settings import Settings
from switchyard_gateway.services.gateway.translate.asks import Ask

log = structlog.get_logger()
SUGGESTED = 5
DEFAULT_MAX_TOKENS = 256          # output asked of a call that names none, when the limits name no default
WARN_EVERY_S = 10.0               # at most one log line this often about Valkey being away
PER_CALL_ARGS = 4 + 2 * len(MEASURES)  # RESERVE's ARGV before the counters': hold name, deadline, want, least, amounts
# error replies that mean the server is away or busy, not that the script is wrong
UNAVAILABLE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY")


class Reservation(msgspec.Struct, frozen=True):
    """What a call holds until its usage event settles it, and what it was granted.

    `hold` names the hold (`ledger.hold_name`: one per accepted call), `ceiling` the output tokens per choice the
    call may produce (None: no limit depends on its output),
    `headers` the OpenAI rate-limit headers of its answer, `held` False when Valkey was away (fail open), `short`
    True when its output was held by a limit rather than by the client: granted less than it wanted, or held to
    the limits' default because it named none (its answer, cut by the limits of the moment, is not cached).
    """

    hold: str
    model_id: str
    tokens: int
    nanos: int
    ceiling: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    held: bool = True
    prices: tuple[float, float] = (0.0, 0.0)       # USD per million input and output tokens
    short: bool = False                            # its output held by a limit, not by the client


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
                 estimator: TokenEstimator, hold_s: float, timeout_s: float = 1.0, on_error: str = "open") -> None:
        if on_error not in ("open", "closed"):
            raise ValueError(f"SWITCHYARD_QUOTA_ON_ERROR must be 'open' or 'closed', not '{on_error}'")
        self.catalog, self.fallbacks = catalog, fallbacks
        self.feed, self.valkey, self.keys = feed, valkey, keys
        self.estimator, self.hold_s, self.timeout_s = estimator, hold_s, timeout_s
        self.fail_open = on_error == "open"
        self.unavailable = 0
        self._warnings = Throttle(WARN_EVERY_S)
        self._plans: dict[tuple[str, str, str], tuple[int, float, tuple[list[Planned], Framed, Framed]]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self.running: dict[str, float] = {}     # the holds of calls in flight -> when each lapses (epoch s)
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, nc: NATS, settings: Settings, catalog: Catalog, fallbacks: Fallbacks) -> QuotaClient:
        """Follow the LIMITS stream and open the Valkey connection (lazily, on the first reservation)."""
        feed = LimitsFeed()
        await feed.start(nc, settings.connect_timeout_s)
        estimator = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(TokenEstimator, image_tokens=settings.image_tokens))
        keys = Keys(key_prefix(settings.quota_prefix, settings.database_url))
        client = cls(catalog, fallbacks, feed, Valkey(settings.redis_url), keys, estimator, settings.quota_hold_s,
                     settings.quota_timeout_s, settings.quota_on_error)
        client._keeper = asyncio.get_running_loop().create_task(client.keep_holds())
        return client

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._releases:
            await asyncio.wait(self._releases, timeout=self.timeout_s)
        await self.feed.stop()
        await self.valkey.close()

    @property
    def book(self) -> LimitsBook:
        return self.feed.book

    async def reserve(self, *, hold: str, key: KeyIssued, model: ModelRegistered,
                      ask: Ask) -> Reservation | None:
        """Hold the call's prompt and output tokens (and cost, and one request) against every limit that applies.

        None when no limit applies (nothing held). Raises QuotaExceeded (402), RateLimited (429) or
        QuotaUnavailable (503). The hold settles from the call's usage event; nothing else is needed,
        whatever happens to the call.
        """
        tenant_id, model_id = key.tenant_id, model.model_id
        scopes = self.book.applicable(tenant_id, model_id)
        if scopes is None:
            return None
        prompt = ask.prompt_tokens()
        choices = 0 if ask.embedding else ask.choices
        want = 0 if ask.embedding else ask.output if ask.output is not None else \
            (scopes[1].default_max_tokens or scopes[0].default_max_tokens or DEFAULT_MAX_TOKENS)
        in_price, out_price = self.price(tenant_id, model)
        amounts = {"t": (prompt, choices), "r": (1, 0), "u": (usd_nanos(prompt, 0, in_price, out_price),
                                                             out_price * 1000 * choices)}
        now = time.time()
        planned, keys, counters = self._plan(scopes, tenant_id, key.key_id, model_id, now)
        bounded = choices > 0 and any(p.counter.measure == "t" or (p.counter.measure == "u" and out_price > 0)
                                      for p in planned)
        args = [hold, int((now + self.hold_s) * 1000), want, min(want, 1)]
        for measure in MEASURES:
            args += amounts[measure]
        args.append(counters)
        try:
            result = await self.valkey.evalsha(RESERVE_SCRIPT.sha, RESERVE_SCRIPT.source, keys, args, self.timeout_s)
        except ValkeyError as exc:
            if not str(exc).startswith(UNAVAILABLE_REPLIES):
                metrics.count_quota_unavailable("error")
                log.error("quota.script_failed", tenant=tenant_id, model=model_id, error=str(exc))
                raise QuotaUnavailable("The quota store could not reserve this call", headers={"retry-after": "1"}) \
                    from None
            return self._unavailable(exc, tenant_id, model_id, hold, prompt, want, choices, bounded)
        except (ConnectionError, TimeoutError) as exc:
            return self._unavailable(exc, tenant_id, model_id, hold, prompt, want, choices, bounded)
        if result[0] != 1:
            raise ask.explained(self.refusal(planned, result, tenant_id, model_id, now))
        self.running[hold] = now + self.hold_s
        out = int(result[1])
        tokens = prompt + out * choices
        return Reservation(hold, model_id, tokens, usd_nanos(prompt, out * choices, in_price, out_price),
                           out if bounded else None, rate_headers(planned, result[2:], now), True,
                           (in_price, out_price), short=bounded and (out < want or ask.output is None))

    async def reserve_or_fallback(self, *, hold: str, key: KeyIssued, model: ModelRegistered,
                                  ask: Ask) -> tuple[ModelRegistered, Reservation | None]:
        """`reserve`, and over a quota (402) when the tenant enabled `fallback_on_quota`, reserve for the
        suggested models in turn instead. Returns the model to serve; raises the first refusal if none fits."""
        try:
            return model, await self.reserve(hold=hold, key=key, model=model, ask=ask)
        except QuotaExceeded as exc:
            tenant = self.catalog.tenants.get(key.tenant_id)
            if tenant is None or not tenant.fallback_on_quota:
                raise
            for candidate in exc.suggested_models:
                fallback = self.catalog.models.get(candidate)
                if fallback is None:
                    continue
                try:
                    return fallback, await self.reserve(hold=hold, key=key, model=fallback, ask=ask)
                except QuotaExceeded:
                    continue
            raise

    def finished(self, reservation: Reservation) -> None:
        """The call is over: its hold now waits only for its usage event, well within `hold_s`."""
        self.running.pop(reservation.hold, None)

    async def keep_holds(self) -> None:
        """Extend the holds of calls still running, so that none lapses under a call that outlives `hold_s` (a long
        stream): a lapsed hold gives its tokens back while the call still spends them, and other calls could then
        take them past the limit. Every `hold_s / 4`, the holds older than that get a new deadline, all in one
        command (`ZADD XX GT`: a hold already settled or lapsed stays gone, and none is shortened)."""
        every = self.hold_s / 4
        while True:
            await asyncio.sleep(every)
            now = time.time()
            due = [name for name, lapses in self.running.items() if lapses - now < self.hold_s - every]
            if not due:
                continue
            lapses = now + self.hold_s
            score = int(lapses * 1000)
            try:
                for start in range(0, len(due), 1000):
                    args: list[Any] = ["ZADD", self.keys.holds, "XX", "GT"]
                    for name in due[start:start + 1000]:
                        args += (score, name)
                    await self.valkey.call(*args, timeout_s=self.timeout_s)
            except (ConnectionError, TimeoutError, ValkeyError) as exc:     # tried again at the next turn
                log.warning("quota.hold_renewal_failed", holds=len(due), error=str(exc) or type(exc).__name__)
                continue
            for name in due:
                if name in self.running:
                    self.running[name] = lapses

    def release(self, reservation: Reservation, input_tokens: int, output_tokens: int, requests: int) -> None:
        """Settle a hold now (a call whose client left), off the caller's path: rate windows keep what the call
        used, period counters give its hold back (the log's settlement counts what it used)."""
        if not reservation.held:
            return
        nanos = usd_nanos(input_tokens, output_tokens, *reservation.prices)
        args = [reservation.hold, input_tokens + output_tokens, requests, nanos]
        task = asyncio.get_running_loop().create_task(self._release(args))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, args: list[Any]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await RELEASE_SCRIPT.run(self.valkey, [self.keys.holds, self.keys.hold_data], args)
        except (ConnectionError, TimeoutError, ValkeyError) as exc:      # the hold expires after quota_hold_s
            log.warning("quota.release_failed", hold=args[0], error=str(exc) or type(exc).__name__)

    def _plan(self, scopes: tuple[Limits, Limits], tenant_id: str, key_id: str, model_id: str,
              now: float) -> tuple[list[Planned], Framed, Framed]:
        """The counters of a (tenant, key, model), remembered until the limits change or a period or
        rate window ends, with the parts of their RESERVE call that do not change (its KEYS and the counters'
        ARGV) framed once; amounts are filled in per call."""
        cache_key = (tenant_id, key_id, model_id)
        cached = self._plans.get(cache_key)
        if cached is not None and cached[0] == self.book.version and now < cached[1]:
            return cached[2]
        planned = plan(self.keys, scopes, self.book.timezone(tenant_id), tenant_id, key_id, model_id,
                       datetime.fromtimestamp(now, UTC), Estimate(0, 0))
        names, args = reserve_call(self.keys, "", 0, [item.counter for item in planned], {})
        made = (planned, Framed(names), Framed(args[PER_CALL_ARGS:]))
        if len(self._plans) > 10_000:
            self._plans.clear()
        self._plans[cache_key] = (self.book.version, min(p.reset.timestamp() for p in planned), made)
        return made

    def refusal(self, planned: list[Planned], reply: list[int], tenant_id: str, model_id: str,
                now: float) -> GatewayError:
        """The error for the counter that would go over (RESERVE's refusal: its index, its value, every
        counter's value), with OpenAI's rate-limit headers for requests and tokens: the refusing counter's
        for its kind, the tightest other counter's for the other."""
        item, used = planned[reply[1] - 1], reply[2]
        limit = item.counter.limit
        error: GatewayError
        if item.rate:
            error = RateLimited(item.quota_type, limit, used, item.reset)
        elif item.quota_type == "budget":
            error = QuotaExceeded("budget", limit / NANOS_PER_USD, round(used / NANOS_PER_USD, 9), item.reset,
                                  self.fallbacks.suggestions(tenant_id, model_id)[:SUGGESTED], item.model_id)
        else:
            error = QuotaExceeded(item.quota_type, limit, used, item.reset,
                                  self.fallbacks.suggestions(tenant_id, model_id)[:SUGGESTED], item.model_id)
        error.headers = {**error.headers, **dict(rate_headers(planned, reply[3:], now)),
                         **dict(rate_headers([item], [used], now))}
        return error

    def price(self, tenant_id: str, model: ModelRegistered) -> tuple[float, float]:
        """USD per million input and output tokens: the tenant's assignment price, else the model's."""
        assignment = self.catalog.assignments.get(tenant_id, {}).get(model.model_id)
        inp, out = model.input_price_per_1m, model.output_price_per_1m
        if assignment is not None:
            inp = assignment.input_price_per_1m if assignment.input_price_per_1m is not None else inp
            out = assignment.output_price_per_1m if assignment.output_price_per_1m is not None else out
        return inp, out

    def _unavailable(self, exc: Exception, tenant_id: str, model_id: str, hold: str, prompt: int, want: int,
                     choices: int, bounded: bool) -> Reservation:
        """Valkey is away or slow: let the call through (held to the output it asked for), or refuse it."""
        self.unavailable += 1
        action = "open" if self.fail_open else "closed"
        metrics.count_quota_unavailable(action)
        if self._warnings.due() is not None:
            log.warning(f"quota.unavailable_fail_{action}", tenant=tenant_id, error=str(exc) or type(exc).__name__,
                        calls_so_far=self.unavailable)
        if not self.fail_open:
            raise QuotaUnavailable("Quota limits cannot be checked right now; retry shortly",
                                   headers={"retry-after": "1"})
        return Reservation(hold, model_id, prompt + want * choices, 0, want if bounded else None, held=False)
