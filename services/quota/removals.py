"""The registry's tenant and model removals as log positions, folded from the log: which limits a removal voided.

Limits set before a tenant (or a model) was removed belong to what was removed, not to a tenant or model later
created under the same id; limits set while it was gone (a command that crossed the removal) belong to nothing.
Both are told by comparing log positions, never clocks, so a fold from position 0 decides as the live one did.
"""

from __future__ import annotations

import asyncpg

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import Event, ModelRegistered, ModelRemoved, TenantCreated, TenantRemoved
from switchyard_gateway.events import LogFold

TYPES = (subjects.TENANT_CREATED, subjects.TENANT_REMOVED, subjects.MODEL_REGISTERED, subjects.MODEL_REMOVED)


class Removals:
    """Per tenant and per model: the position of its last removal, and whether it is gone (not created since)."""

    def __init__(self) -> None:
        self.tenants_removed: dict[str, int] = {}
        self.models_removed: dict[str, int] = {}
        self.tenants_gone: set[str] = set()
        self.models_gone: set[str] = set()
        self.log = LogFold(TYPES, self._apply, name="quota.removals")

    @property
    def position(self) -> int:
        """How far the log is folded in."""
        return self.log.position.value

    async def catch_up(self, conn: asyncpg.Connection) -> int:
        return await self.log.catch_up(conn)

    def _apply(self, event: Event) -> None:
        position = self.log.applying
        match event:
            case TenantRemoved(tenant_id=tenant):
                self.tenants_removed[tenant] = position
                self.tenants_gone.add(tenant)
            case TenantCreated(tenant_id=tenant):
                self.tenants_gone.discard(tenant)
            case ModelRemoved(model_id=model):
                self.models_removed[model] = position
                self.models_gone.add(model)
            case ModelRegistered(model_id=model):
                self.models_gone.discard(model)

    def voided(self, tenant: str, model: str, position: int) -> bool:
        """Whether limits of (tenant, model or "") set at `position` were voided by a removal: one after them, or
        one not undone since (set while the tenant or model was gone). Only for positions this fold has passed:
        past them it cannot tell, and says no."""
        if position > self.position:
            return False
        if self.tenants_removed.get(tenant, 0) > position or tenant in self.tenants_gone:
            return True
        return bool(model) and (self.models_removed.get(model, 0) > position or model in self.models_gone)
