"""Route plans and the one fallback policy: the chain failover walks and the models a quota refusal suggests."""

from __future__ import annotations

import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts.events import (
    EndpointRegistered, ModelRegistered, TenantCreated, TenantModelAssigned,
)
from switchyard_gateway.services.gateway.edge.errors import ModelNotConfigured, ModelNotFound
from switchyard_gateway.services.gateway.pipeline.fallbacks import Fallbacks
from switchyard_gateway.services.gateway.pipeline.routing import Router

TENANT = "acme"


def catalog(*events: object, served: tuple[str, ...] = ("big", "mid", "small", "tiny")) -> Catalog:
    c = Catalog()
    for event in (TenantCreated(tenant_id=TENANT), *events,
                  EndpointRegistered(endpoint_id="ep", provider_id="p", base_url="http://127.0.0.1:9", models=served)):
        c.apply(event)  # type: ignore[arg-type]
    return c


def router(c: Catalog) -> Router:
    return Router(c, Fallbacks(c))


def chain(c: Catalog, requested: str = "big") -> list[str]:
    return [target.model.model_id for target in router(c).resolve(TENANT, requested).targets]


def test_plan_follows_each_models_own_fallback_in_order() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid", fallback_model="small"),
                ModelRegistered(model_id="small"))
    assert chain(c) == ["big", "mid", "small"]


def test_the_tenants_fallback_replaces_the_models_own_in_the_chain() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid"),
                ModelRegistered(model_id="small"),
                TenantModelAssigned(tenant_id=TENANT, model_id="big", fallback_model="small"))
    assert chain(c) == ["big", "small"]


def test_chain_stops_where_a_fallback_repeats() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid", fallback_model="big"))
    plan = router(c).resolve(TENANT, "big")
    assert [t.model.model_id for t in plan.targets] == ["big", "mid"] and plan.unknown_fallback == ""


def test_chain_ends_at_a_fallback_that_cannot_serve_and_names_it() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid", fallback_model="gone"),
                served=("big", "mid"))
    plan = router(c).resolve(TENANT, "big")
    assert [t.model.model_id for t in plan.targets] == ["big", "mid"] and plan.unknown_fallback == "gone"
    c.apply(ModelRegistered(model_id="lonely"))                      # registered, but no endpoint serves it
    c.apply(ModelRegistered(model_id="mid", fallback_model="lonely"))
    assert router(c).resolve(TENANT, "big").unknown_fallback == "lonely"


def test_plan_is_kept_until_the_catalog_changes() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid"))
    routes = router(c)
    first = routes.resolve(TENANT, "big")
    assert routes.resolve(TENANT, "big") is first
    c.apply(ModelRegistered(model_id="big"))                         # the fallback is withdrawn
    assert [t.model.model_id for t in routes.resolve(TENANT, "big").targets] == ["big"]


def test_a_model_the_tenant_may_not_use_is_not_configured_and_an_unknown_one_not_found() -> None:
    c = catalog(ModelRegistered(model_id="big"), TenantModelAssigned(tenant_id=TENANT, model_id="big", enabled=False))
    with pytest.raises(ModelNotConfigured) as refused:
        router(c).resolve(TENANT, "big")
    assert (refused.value.status, refused.value.code) == (404, "MODEL_NOT_CONFIGURED")
    assert refused.value.body("openai")["error"]["message"] == f"Model 'big' is not configured for tenant '{TENANT}'"
    with pytest.raises(ModelNotConfigured, match="No default model is configured"):
        router(c).resolve(TENANT, "default")
    with pytest.raises(ModelNotFound) as unknown:
        router(c).resolve(TENANT, "nope")
    assert not isinstance(unknown.value, ModelNotConfigured) and unknown.value.code == "model_not_found"


def test_suggestions_list_the_designated_fallbacks_then_same_kind_models_by_priority() -> None:
    c = catalog(ModelRegistered(model_id="big", fallback_model="mid"), ModelRegistered(model_id="mid"),
                ModelRegistered(model_id="small"), ModelRegistered(model_id="tiny"),
                ModelRegistered(model_id="embed", kind="embedding"),
                TenantModelAssigned(tenant_id=TENANT, model_id="big", fallback_model="small"),
                TenantModelAssigned(tenant_id=TENANT, model_id="tiny", priority=5),
                served=("big", "mid", "small", "tiny", "embed"))
    assert Fallbacks(c).suggestions(TENANT, "big") == ["small", "mid", "tiny"]
    assert Fallbacks(c).designated(TENANT, "big") == ["small", "mid"]
    assert [t.model.model_id for t in router(c).resolve(TENANT, "big").targets] == ["big", "small"]


def test_the_embeddings_health_of_a_gateway_with_no_embedding_model_yet_is_healthy() -> None:
    """A fresh single-user gateway answered its embeddings health check 503 (a container that never became
    healthy); none registered is nothing failing. Every registered one down is still unhealthy."""
    from switchyard_gateway.services.gateway.api.embedding_seeds import embeddings_status

    assert embeddings_status({}) == "healthy"
    assert embeddings_status({"a": True, "b": True}) == "healthy"
    assert embeddings_status({"a": True, "b": False}) == "degraded"
    assert embeddings_status({"a": False}) == "unhealthy"
