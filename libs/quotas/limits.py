"""Limits as a fold of `LimitsSet` events, the merge of an update into them, and their validation."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from switchyard_gateway.contracts.events import Event, ModelRemoved, TenantRemoved
from switchyard_gateway.contracts.quota import Limits, LimitsSet, LimitsUpdate
from switchyard_gateway.quotas.periods import zone

NO_LIMITS = Limits()
_COUNTS = ("daily_tokens", "monthly_tokens", "monthly_requests", "rpm", "tpm", "key_rpm", "key_tpm",
           "default_max_tokens")
MAX_COUNT = 10**15                # counters stay exact in the reservation script's arithmetic (doubles)
MAX_BUDGET_USD = 1_000_000.0      # 10^15 nano-USD
MAX_DEFAULT_OUTPUT = 10_000_000


class InvalidLimits(ValueError):
    """An update that cannot be applied; `field` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def enforced(limits: Limits) -> bool:
    """Whether any limit is set (the time zone, budget period and output default alone enforce nothing)."""
    return any(v is not None for v in (
        limits.daily_tokens, limits.monthly_tokens, limits.monthly_requests, limits.rpm, limits.tpm,
        limits.key_rpm, limits.key_tpm, limits.budget_usd))


def merge(current: Limits, update: LimitsUpdate, *, per_model: bool) -> Limits:
    """The limits after an update: a field left out keeps its value, null removes it; or InvalidLimits."""
    changes = {name: value for name in update.__struct_fields__
               if (value := getattr(update, name)) is not msgspec.UNSET}
    for name in _COUNTS:
        value = changes.get(name)
        if value is not None and value < 0:
            raise InvalidLimits(f"{name} cannot be negative", name)
        bound = MAX_DEFAULT_OUTPUT if name == "default_max_tokens" else MAX_COUNT
        if value is not None and value > bound:
            raise InvalidLimits(f"{name} cannot be more than {bound}", name)
    budget = changes.get("budget_usd")
    if budget is not None and not 0 <= budget <= MAX_BUDGET_USD:
        raise InvalidLimits(f"budget_usd must be between 0 and {MAX_BUDGET_USD:g}", "budget_usd")
    if changes.get("default_max_tokens") == 0:
        raise InvalidLimits("default_max_tokens must be at least 1", "default_max_tokens")
    if "budget_period" in changes and changes["budget_period"] is None:
        changes["budget_period"] = "month"
    if changes.get("timezone") is not None:
        if per_model:
            raise InvalidLimits("timezone is set per tenant, not per model", "timezone")
        try:
            zone(changes["timezone"])
        except ValueError as exc:
            raise InvalidLimits(str(exc), "timezone") from None
    return msgspec.structs.replace(current, **changes)


class LimitsBook:
    """Every tenant's and tenant x model's limits; `version` grows with each change.

    A `LimitsSet` of no limits at all (`NO_LIMITS`: cleared, or never anything set) leaves no entry, so the views
    show nothing for it. `positions` holds the log position of the `LimitsSet` in force for each (tenant, model)
    ("" for the tenant's own) when the folder hands it over (the quota service's fold of the log; a reader of the
    LIMITS stream does not, and sees 0). A removal drops what it names (the counter ledger folds them in log order).
    """

    def __init__(self) -> None:
        self.tenants: dict[str, Limits] = {}
        self.models: dict[str, dict[str, Limits]] = {}
        self.positions: dict[tuple[str, str], int] = {}
        self.version = 0

    def apply(self, event: Event, position: int = 0) -> None:
        """Fold one event in (at its log position, when known); events of other kinds are ignored."""
        match event:
            case LimitsSet(tenant_id=tenant, model_id=model):
                self._set(tenant, model, event.limits, position)
            case TenantRemoved(tenant_id=tenant):
                self.tenants.pop(tenant, None)
                self.positions.pop((tenant, ""), None)
                for model in self.models.pop(tenant, {}):
                    self.positions.pop((tenant, model), None)
            case ModelRemoved(model_id=model):
                for tenant in [t for t, scopes in self.models.items() if model in scopes]:
                    self._set(tenant, model, NO_LIMITS, 0)
            case _:
                return
        self.version += 1

    def _set(self, tenant: str, model: str, limits: Limits, position: int) -> None:
        scopes = self.tenants if not model else self.models.setdefault(tenant, {})
        key = tenant if not model else model
        if limits == NO_LIMITS:
            scopes.pop(key, None)
            self.positions.pop((tenant, model), None)
            if model and not scopes:
                del self.models[tenant]
        else:
            scopes[key] = limits
            self.positions[(tenant, model)] = position

    def in_force(self) -> Iterator[tuple[str, str, int]]:
        """(tenant, model or "", log position) of every entry."""
        for tenant in self.tenants:
            yield tenant, "", self.positions.get((tenant, ""), 0)
        for tenant, scopes in self.models.items():
            for model in scopes:
                yield tenant, model, self.positions.get((tenant, model), 0)

    def tenant(self, tenant_id: str) -> Limits:
        return self.tenants.get(tenant_id, NO_LIMITS)

    def model(self, tenant_id: str, model_id: str) -> Limits:
        return self.models.get(tenant_id, {}).get(model_id, NO_LIMITS)

    def timezone(self, tenant_id: str) -> str:
        return self.tenant(tenant_id).timezone or "UTC"

    def applicable(self, tenant_id: str, model_id: str) -> tuple[Limits, Limits] | None:
        """(tenant limits, tenant x model limits) when any of them enforces something, else None."""
        tenant = self.tenants.get(tenant_id)
        model = self.models.get(tenant_id, {}).get(model_id) if tenant_id in self.models else None
        if (tenant is None or not enforced(tenant)) and (model is None or not enforced(model)):
            return None
        return tenant or NO_LIMITS, model or NO_LIMITS
