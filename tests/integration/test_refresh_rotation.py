"""Refresh-token rotation's record in the session's real Valkey: a token's first use, the same answer within its
grace, a reuse past it, and a refusal when Valkey is away."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.resp import Valkey
from switchyard_gateway.services.gateway.edge.rotations import Rotations, Unavailable


async def test_a_refresh_token_is_first_used_once_and_reused_only_past_its_grace(urls) -> None:
    prefix = f"t:{uuid.uuid4().hex[:8]}:"
    rotations = Rotations(Valkey(urls.redis_url), prefix, grace_s=0.3)
    expires = time.time() + 60
    try:
        first, reused = await rotations.use("a", expires)
        assert not reused and abs(first - time.time()) < 5
        assert await rotations.use("a", expires) == (first, False), "within the grace: the same first use"
        assert (await rotations.use("b", expires))[1] is False, "another token is its own"
        await asyncio.sleep(0.35)                  # the grace passing is what is under test
        assert await rotations.use("a", expires) == (first, True)
        ttl_ms = await rotations.valkey.call("PTTL", f"{prefix}r:a")
        assert 55_000 < ttl_ms <= 60_000, "kept as long as the token could be presented, no longer"
    finally:
        await rotations.close()


async def test_with_no_grace_any_second_use_is_a_reuse(urls) -> None:
    rotations = Rotations(Valkey(urls.redis_url), f"t:{uuid.uuid4().hex[:8]}:", grace_s=0)
    try:
        assert (await rotations.use("a", time.time() + 60))[1] is False
        assert (await rotations.use("a", time.time() + 60))[1] is True
    finally:
        await rotations.close()


async def test_valkey_away_is_no_answer_not_a_first_use() -> None:
    rotations = Rotations(Valkey(f"redis://127.0.0.1:{pick_free_port(set())}"), "t:", grace_s=10)
    try:
        with pytest.raises(Unavailable):
            await rotations.use("a", time.time() + 60)
    finally:
        await rotations.close()
