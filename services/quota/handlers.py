"""Quota's NATS entry points (limits commands, views, reservations) and its background loops."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.quota import QuotaQuery, ReservePlan, ReserveReply, SetLimits
from switchyard_gateway.events import TRANSIENT, LogFollower, LogNotices
from switchyard_gateway.kit.service import Runtime, serve_subscriptions
from switchyard_gateway.quotas.periods import Keys, key_prefix
from switchyard_gateway.quotas.scripts import EXPIRE_SCRIPT, RESERVE_SCRIPT, reserve_call
from switchyard_gateway.resp import Valkey, ValkeyError
from switchyard_gateway.services.quota import views
from switchyard_gateway.services.quota.counters import Counters, ValkeyLead
from switchyard_gateway.services.quota.metrics import UsageRatios
from switchyard_gateway.services.quota.settings import Settings
from switchyard_gateway.services.quota.store import LimitsStore

_set_limits = decoder(SetLimits)
_query = decoder(QuotaQuery)
_plan = decoder(ReservePlan)
EXPIRE_EVERY_S = 1.0
VALKEY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Deps:
    """What the quota service's handlers and loops use, built once by `start`."""

    log: Any
    valkey: Valkey
    keys: Keys
    limits: LimitsStore
    counters: LogFollower        # the log followed into the counters, by push
    notices: LogNotices


async def on_command(deps: Deps, data: bytes) -> bytes:
    """Set a tenant's or a tenant x model's limits (a LimitsSet event unless nothing changed)."""
    return encode(await deps.limits.set_limits(_set_limits.decode(data)))


async def on_query(deps: Deps, data: bytes) -> bytes:
    """Answer the limits, quotas and usage views."""
    query = _query.decode(data)
    await deps.limits.catch_up()           # limits another quota replica recorded
    book = deps.limits.book
    valkey, keys = deps.valkey, deps.keys
    match query.kind:
        case "limits":
            return encode(views.limits(book, query))
        case "quotas":
            return encode(await views.quotas(book, valkey, keys, query))
        case _:
            return encode(await views.usage(book, valkey, keys, query))


async def on_reserve(deps: Deps, data: bytes) -> bytes:
    """Reserve a planned call against its counters (the NATS path; gateways normally call Valkey directly)."""
    plan = _plan.decode(data)
    names, args = reserve_call(deps.keys, plan.request_id, plan.deadline_ms, plan.counters)
    result = await RESERVE_SCRIPT.run(deps.valkey, names, args)
    return encode(ReserveReply(True) if result[0] == 1 else ReserveReply(False, int(result[1]), int(result[2])))


SUBSCRIPTIONS = {
    subjects.QUOTA_COMMAND: on_command,
    subjects.QUOTA_QUERY: on_query,
    subjects.QUOTA_RESERVE: on_reserve,
}


async def expire_holds(deps: Deps) -> None:
    """Release reservations whose call never settled (the gateway died, or the usage event is lost)."""
    keys = deps.keys
    while True:
        await asyncio.sleep(EXPIRE_EVERY_S)
        try:
            released = await EXPIRE_SCRIPT.run(deps.valkey, [keys.holds, keys.hold_data],
                                               [int(time.time() * 1000), 1000])
        except (OSError, ValkeyError, asyncio.TimeoutError) as exc:
            deps.log.warning("quota.expire_failed", error=str(exc) or type(exc).__name__)
            continue
        if released:
            deps.log.warning("quota.holds_expired", count=released)


async def start(runtime: Runtime[Settings]) -> Deps:
    assert runtime.pool is not None
    settings = runtime.settings
    valkey = Valkey(settings.redis_url, connect_timeout_s=5.0, timeout_s=VALKEY_TIMEOUT_S)
    await valkey.call("PING")
    keys = Keys(key_prefix(settings.quota_prefix, settings.database_url))
    store = LimitsStore(runtime.pool, runtime.nc)
    await store.load()
    notices = LogNotices(settings.database_url, settings.connect_timeout_s)
    counters = LogFollower(runtime.pool, Counters(runtime.pool, valkey, keys, on_removal=store.removed), notices,
                           lead=ValkeyLead(valkey, keys.leader), errors=(*TRANSIENT, ValkeyError))
    deps = Deps(log=runtime.log, valkey=valkey, keys=keys, limits=store, counters=counters, notices=notices)
    runtime.before_scrape.append(UsageRatios(runtime.pool, valkey, keys, store).refresh)
    runtime.spawn(notices.run(), "quota-log-notices")
    runtime.spawn(counters.run(), "quota-counters")
    runtime.spawn(expire_holds(deps), "quota-expiry")
    runtime.spawn(store.outbox.follow_retries(), "quota-limits-retries")
    runtime.spawn(store.follow_removals(), "quota-limits-removals")
    await serve_subscriptions(runtime, SUBSCRIPTIONS, deps)
    return deps


async def stop(deps: Deps) -> None:
    await deps.valkey.close()
