"""Metering's NATS entry points: the usage ingest, usage queries, the time-series rollup, the log's feed and its replay."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import asyncpg

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import decoder, encode
from switchyard_gateway.contracts.events import now
from switchyard_gateway.contracts.messages import ErrorBody
from switchyard_gateway.contracts.metering import MeteringQuery, RollupDays, TokenUsageReply
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.events import Ingest, LogFeed, LogNotices
from switchyard_gateway.kit.service import Runtime, serve_subscriptions
from switchyard_gateway.services.metering import door, history, metrics, queries, rollup
from switchyard_gateway.services.metering.projections import PROJECTIONS, UsageCost
from switchyard_gateway.services.metering.settings import Settings

_query = decoder(MeteringQuery)
_rollup = decoder(RollupDays)


@dataclass(frozen=True)
class Deps:
    """What metering's handlers use, built once by `start`."""

    pool: asyncpg.Pool
    ingest: Ingest
    feed: LogFeed
    history: history.History


async def on_query(deps: Deps, data: bytes) -> bytes:
    """Token counts, token usage per endpoint and model, or one model's stats; one tenant's or everyone's."""
    query = _query.decode(data)
    async with deps.pool.acquire() as conn:
        match query.query:
            case "token_counts":
                return encode(await queries.token_counts(conn, query.tenant_id))
            case "usage":
                return encode(TokenUsageReply(await queries.token_usage(conn, query.tenant_id)))
            case "stats":                   # no model: every model's together
                try:
                    since = None if query.since is None else queries.from_epoch(query.since)
                except (ValueError, OverflowError, OSError):
                    raise ServiceError(400, ErrorBody("VALIDATION_ERROR", "'since' is not a time (epoch seconds)",
                                                      "since")) from None
                return encode(await queries.stats(conn, query.model or None, query.tenant_id, since))
    raise ServiceError(400, ErrorBody("VALIDATION_ERROR", f"unknown query {query.query!r}", "query"))


async def on_rollup(deps: Deps, data: bytes) -> bytes:
    """Roll the minute series up into days (and trim), idempotently."""
    command = _rollup.decode(data)
    async with deps.pool.acquire() as conn:
        return encode(await rollup.roll_up(conn, command, now()))


async def on_replay(deps: Deps, data: bytes, subject: str, reply: str) -> bytes | None:
    """A page of the log (`metering.replay.v1`, or `.<tenant>` for one tenant's events)."""
    return await history.on_replay(deps.history, data, subject, reply)


async def on_door(deps: Deps, data: bytes, subject: str, reply: str) -> bytes | None:
    """An outside subscriber's request through its door (`metering.subscriber.v1.<user>.<name>.<tenant>.<op>`)."""
    return await door.on_request(deps.history, data, subject, reply)


SUBSCRIPTIONS = {subjects.METERING_QUERY: on_query, subjects.METERING_COMMAND: on_rollup}
# wildcard subjects: the handlers read the tenant token, and the door who asks
BY_SUBJECT = {**dict.fromkeys(history.SUBJECTS, on_replay), door.SUBJECT: on_door}
AT_ONCE = {door.SUBJECT: door.AT_ONCE}      # subscribers' requests side by side: one slow page holds up no other
REPLY_RULES = {door.SUBJECT: door.reply_rule}   # a subscriber is answered on its own inbox alone, busy or not
SHARES = {door.SUBJECT: (door.user_of, door.PER_USER)}     # one subscriber's flood leaves room for the others


async def start(runtime: Runtime[Settings]) -> Deps:
    """Follow the usage stream into the log and projections; answer queries."""
    assert runtime.pool is not None
    settings = runtime.settings
    cost: UsageCost = PROJECTIONS["usage_cost"]  # type: ignore[assignment]
    ingest = Ingest(
        runtime.nc, runtime.pool, subjects.STREAM_USAGE, subjects.CONSUMER_METERING,
        list(PROJECTIONS.values()), batch=settings.ingest_batch, linger_s=settings.ingest_linger_s,
        on_commit=lambda appended: metrics.observe_committed(appended, cost.book),
    )
    notices = LogNotices(settings.database_url, settings.connect_timeout_s)
    feed = LogFeed(runtime.pool, runtime.nc, notices)
    deps = Deps(pool=runtime.pool, ingest=ingest, feed=feed, history=history.History(runtime.pool, runtime.nc, settings.log_feed))
    runtime.before_scrape.append(ingest.refresh_lag)
    # Ingest allocates tens of thousands of small objects per batch and makes no cycles: what start-up
    # built is frozen out of the collector, and it runs less often (about a third of ingest CPU otherwise).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    runtime.spawn(ingest.run(), "usage-ingest")
    if settings.log_feed:
        runtime.spawn(notices.run(), "log-notices")
        runtime.spawn(feed.run(), "log-feed")
    await serve_subscriptions(runtime, SUBSCRIPTIONS, deps, BY_SUBJECT, AT_ONCE, REPLY_RULES, SHARES)
    return deps
