"""Metering's NATS entry points: the usage follower and the usage queries."""

from __future__ import annotations

from libs.contracts import subjects
from libs.contracts.codec import decoder, encode
from libs.contracts.messages import TokenCountsQuery
from libs.kit.projections import Follower
from libs.kit.service import Deps, serve_subscriptions
from services.metering import queries
from services.metering.projections import PROJECTIONS

_token_counts_query = decoder(TokenCountsQuery)


async def on_token_counts(deps: Deps, data: bytes) -> bytes:
    """Answer a token-count query from the projection."""
    query = _token_counts_query.decode(data)
    assert deps.pool is not None
    async with deps.pool.acquire() as conn:
        return encode(await queries.token_counts(conn, query.tenant_id))


SUBSCRIPTIONS = {subjects.METERING_QUERY: on_token_counts}


async def start(deps: Deps) -> None:
    """Follow the usage stream into the log and projections; answer queries."""
    assert deps.nc is not None and deps.pool is not None
    follower = Follower(
        deps.nc, deps.pool, subjects.STREAM_USAGE, subjects.CONSUMER_METERING,
        list(PROJECTIONS.values()), batch=deps.settings.ingest_batch,
    )
    deps.extra["follower"] = follower
    deps.spawn(follower.run(), "usage-follower")
    await serve_subscriptions(deps, SUBSCRIPTIONS)
