"""Two quota replicas' limits stores on one log: each sees what the other recorded once it catches up."""

from __future__ import annotations

import uuid

import msgspec

from switchyard_gateway.contracts.quota import LimitsSet, LimitsUpdate, SetLimits
from switchyard_gateway.kit import natsio
from switchyard_gateway.services.quota.store import LimitsStore


async def test_a_replica_sees_limits_another_recorded_and_never_folds_backwards(pool, nc) -> None:
    await natsio.ensure_streams(nc, 1)
    first, second = LimitsStore(pool, nc), LimitsStore(pool, nc)
    await first.load()
    await second.load()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await first.set_limits(SetLimits(tenant_id=tenant, update=LimitsUpdate(daily_tokens=100)))
    await first.set_limits(SetLimits(tenant_id=tenant, update=LimitsUpdate(daily_tokens=200)))
    assert tenant not in second.book.tenants
    await second.catch_up()
    assert second.book.tenant(tenant).daily_tokens == 200
    # an older event handed over late (a concurrent catch-up's batch) changes nothing
    older = msgspec.structs.replace(first.book.tenant(tenant), daily_tokens=100)
    second.limits.fold(1, LimitsSet(tenant_id=tenant, limits=older))
    assert second.book.tenant(tenant).daily_tokens == 200
    await second.set_limits(SetLimits(tenant_id=tenant, update=LimitsUpdate(rpm=5)))
    await first.catch_up()
    assert (first.book.tenant(tenant).daily_tokens, first.book.tenant(tenant).rpm) == (200, 5)
