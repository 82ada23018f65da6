"""What the Ollama listing routes show a tenant (/api/tags, /api/ps, /api/show), from a catalog folded from real events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.routing import ModelFacts
from switchyard_gateway.services.gateway.api.ollama_listings import ollama_name, ps_body, show_body, tags_body
from switchyard_gateway.services.registry.decide import decide


def run(catalog: Catalog, *commands: m.Command) -> None:
    for command in commands:
        for event in decide(catalog, command)[0]:
            catalog.apply(event)


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    run(c,
        m.RegisterProvider(provider_id="ollama-local", kind="ollama"),
        m.RegisterProvider(provider_id="vllm", kind="openai-compatible"),
        m.RegisterModel(model_id="llama3.2", aliases=("llama3.2:latest",), context_length=131072,
                        input_price_per_1m=0.05, output_price_per_1m=0.10),
        m.RegisterModel(model_id="qwen2.5:7b-instruct-q4_K_M", context_length=32768),
        m.RegisterModel(model_id="nomic-embed-text", kind="embedding", context_length=8192),
        m.RegisterModel(model_id="orphan"),
        m.RegisterEndpoint(endpoint_id="ollama-1", provider_id="ollama-local", base_url="http://127.0.0.1:11434",
                           models=("llama3.2:latest", "nomic-embed-text")),
        m.RegisterEndpoint(endpoint_id="ollama-2", provider_id="ollama-local", base_url="http://127.0.0.1:11435",
                           models=("llama3.2",)),
        m.RegisterEndpoint(endpoint_id="vllm-1", provider_id="vllm", base_url="http://127.0.0.1:8000",
                           models=("qwen2.5:7b-instruct-q4_K_M", "llama3.2")),
        m.CreateTenant(tenant_id="everyone", all_models=True),
        m.CreateTenant(tenant_id="narrow", all_models=False),
        m.AssignModel(tenant_id="narrow", model_id="llama3.2", output_price_per_1m=0.5),
        m.AssignModel(tenant_id="narrow", model_id="nomic-embed-text", enabled=False),
        )
    return c


def names(body: dict) -> list[str]:
    return [entry["name"] for entry in body["models"]]


def test_tags_lists_each_served_model_once_with_ollama_names(catalog: Catalog) -> None:
    body = tags_body(catalog, "everyone")
    assert names(body) == ["llama3.2:latest", "nomic-embed-text:latest", "qwen2.5:7b-instruct-q4_K_M"]
    llama = body["models"][0]
    assert llama["model"] == llama["name"] and len(llama["digest"]) == 64 and llama["size"] == 0
    assert llama["modified_at"].endswith("Z")
    assert llama["details"]["family"] == "llama" and llama["details"]["format"] == "gguf"
    qwen = body["models"][2]["details"]
    assert (qwen["family"], qwen["parameter_size"], qwen["quantization_level"], qwen["format"]) \
        == ("qwen", "7B", "Q4_K_M", "")


def test_tags_shows_only_what_the_tenant_may_use(catalog: Catalog) -> None:
    assert names(tags_body(catalog, "narrow")) == ["llama3.2:latest"]
    assert names(tags_body(catalog, "nobody")) == []


def test_ps_is_empty_without_routing_state(catalog: Catalog) -> None:
    assert ps_body(catalog, "everyone", None) == {"models": []}


def test_ps_lists_models_loaded_on_an_endpoint_serving_them(catalog: Catalog) -> None:
    loaded = {"ollama-1": frozenset({"llama3.2:latest", "nomic-embed-text"}),
              "ollama-2": frozenset({"llama3.2"}),
              "vllm-1": frozenset({"not-registered", "nomic-embed-text"})}
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    body = ps_body(catalog, "everyone", lambda eid: loaded.get(eid, frozenset()), now)
    assert names(body) == ["llama3.2:latest", "nomic-embed-text:latest"]
    entry = body["models"][0]
    assert entry["expires_at"] == "2025-01-01T12:05:00.000000Z" and entry["context_length"] == 131072
    assert "modified_at" not in entry and entry["size_vram"] == 0
    assert names(ps_body(catalog, "narrow", lambda eid: loaded.get(eid, frozenset()), now)) == ["llama3.2:latest"]


def test_show_describes_a_model_by_any_of_its_names(catalog: Catalog) -> None:
    for name in ("llama3.2", "llama3.2:latest"):
        body = show_body(catalog, "narrow", name)
        assert body is not None
        assert body["capabilities"] == ["completion"]          # the registry's kind: no server said more
        assert body["model_info"] == {"general.architecture": "unknown", "unknown.context_length": 131072}
        assert body["switchyard"]["model"] == "llama3.2"
        assert body["switchyard"]["input_price_per_1m"] == 0.05     # the model's own price
        assert body["switchyard"]["output_price_per_1m"] == 0.5     # the tenant's custom price
    embed = show_body(catalog, "everyone", "nomic-embed-text:latest")
    assert embed is not None and embed["capabilities"] == ["embedding"]


def test_show_reports_what_the_serving_endpoints_said_at_their_probes(catalog: Catalog) -> None:
    """Facts come per endpoint under the name it serves the model by; capabilities of all are merged."""
    serving = [e.endpoint_id for e in catalog.endpoints_serving("llama3.2")]
    said = {(serving[0], "llama3.2"): ModelFacts(model="llama3.2", capabilities=("completion", "tools"),
                                                 architecture="llama", context_length=8192)}
    if len(serving) > 1:
        said[(serving[1], "llama3.2")] = ModelFacts(model="llama3.2", capabilities=("completion", "vision"))
    body = show_body(catalog, "narrow", "llama3.2", lambda endpoint, model: said.get((endpoint, model)))
    assert body is not None
    assert set(body["capabilities"]) >= {"completion", "tools"}
    assert body["model_info"] == {"general.architecture": "llama", "llama.context_length": 131072}  # registry's first
    assert body["details"]["family"] == "llama"


@pytest.mark.parametrize(("tenant", "name"), [
    ("everyone", "missing"), ("everyone", "orphan"), ("narrow", "nomic-embed-text"),
    ("narrow", "qwen2.5:7b-instruct-q4_K_M"),
])
def test_show_finds_nothing_the_tenant_cannot_call(catalog: Catalog, tenant: str, name: str) -> None:
    assert show_body(catalog, tenant, name) is None


def test_ollama_names_carry_a_tag() -> None:
    assert ollama_name("llama3.2") == "llama3.2:latest"
    assert ollama_name("qwen2.5:7b") == "qwen2.5:7b"
