"""Quota's start-up: the Redis/Valkey connection its counters live in."""

from __future__ import annotations

import redis.asyncio as redis

from libs.kit.service import Deps


async def start(deps: Deps) -> None:
    client = redis.from_url(deps.settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    await client.ping()
    deps.extra["redis"] = client


async def stop(deps: Deps) -> None:
    client = deps.extra.get("redis")
    if client is not None:
        await client.aclose()
