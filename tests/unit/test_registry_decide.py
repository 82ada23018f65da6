"""Registry decisions beyond the basics: create vs update, assignments, templates, discovery, imports."""

from __future__ import annotations

import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.contracts import events as ev
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts.routing import EndpointModelsDiscovered
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.services.registry.decide import decide, run_all


def run(catalog: Catalog, command: m.Command) -> list[ev.Event]:
    events, _, _ = decide(catalog, command)
    for event in events:
        catalog.apply(event)
    return events


def refused(catalog: Catalog, command: m.Command) -> tuple[int, str, str | None]:
    with pytest.raises(ServiceError) as caught:
        decide(catalog, command)
    return caught.value.status, caught.value.body.code, caught.value.body.field


@pytest.fixture
def catalog() -> Catalog:
    c = Catalog()
    run(c, m.RegisterProvider(provider_id="local", kind="ollama"))
    run(c, m.RegisterModel(model_id="llama3.2", aliases=("llama",)))
    run(c, m.RegisterModel(model_id="qwen2.5"))
    run(c, m.RegisterEndpoint(endpoint_id="pinned", provider_id="local", base_url="http://127.0.0.1:1",
                              models=("llama3.2",)))
    run(c, m.RegisterEndpoint(endpoint_id="auto", provider_id="local", base_url="http://127.0.0.1:2"))
    run(c, m.CreateTenant(tenant_id="acme", all_models=False))
    return c


@pytest.mark.parametrize("command", [
    m.CreateTenant(tenant_id="acme", mode="create"),
    m.RegisterProvider(provider_id="local", kind="ollama", mode="create"),
    m.RegisterEndpoint(endpoint_id="auto", provider_id="local", base_url="http://127.0.0.1:2", mode="create"),
    m.RegisterModel(model_id="qwen2.5", mode="create"),
])
def test_creating_an_existing_resource_is_a_conflict_even_when_identical(catalog: Catalog, command) -> None:
    assert refused(catalog, command)[:2] == (409, "CONFLICT")


@pytest.mark.parametrize(("command", "code"), [
    (m.CreateTenant(tenant_id="ghost", mode="update"), "TENANT_NOT_FOUND"),
    (m.RegisterProvider(provider_id="ghost", kind="ollama", mode="update"), "PROVIDER_NOT_FOUND"),
    (m.RegisterModel(model_id="ghost", mode="update"), "MODEL_NOT_FOUND"),
    (m.RegisterEndpoint(endpoint_id="ghost", provider_id="local", base_url="http://h:1", mode="update"),
     "ENDPOINT_NOT_FOUND"),
])
def test_updating_a_missing_resource_is_not_found(catalog: Catalog, command, code: str) -> None:
    assert refused(catalog, command)[:2] == (404, code)


def test_upsert_stays_idempotent_for_bootstraps(catalog: Catalog) -> None:
    assert run(catalog, m.RegisterProvider(provider_id="local", kind="ollama")) == []
    assert run(catalog, m.RegisterEndpoint(endpoint_id="auto", provider_id="local", base_url="http://127.0.0.1:2")) == []


def test_assignment_carries_custom_prices_and_fallback(catalog: Catalog) -> None:
    run(catalog, m.AssignModel(tenant_id="acme", model_id="llama", input_price_per_1m=0.5, output_price_per_1m=1.5,
                               fallback_model="qwen2.5", priority=7))
    assignment = catalog.assignments["acme"]["llama3.2"]          # the alias resolved to the model's id
    assert (assignment.input_price_per_1m, assignment.output_price_per_1m) == (0.5, 1.5)
    assert (assignment.fallback_model, assignment.priority) == ("qwen2.5", 7)


@pytest.mark.parametrize(("command", "expected"), [
    (m.AssignModel(tenant_id="acme", model_id="llama3.2", fallback_model="nope"), (404, "MODEL_NOT_FOUND",
                                                                                    "fallback_model")),
    (m.AssignModel(tenant_id="acme", model_id="llama3.2", fallback_model="llama"), (422, "VALIDATION_ERROR",
                                                                                     "fallback_model")),
    (m.AssignModel(tenant_id="acme", model_id="llama3.2", input_price_per_1m=-1), (400, "VALIDATION_ERROR",
                                                                                    "input_price_per_1m")),
    (m.RegisterModel(model_id="mistral", fallback_model="nope"), (404, "MODEL_NOT_FOUND", "fallback_model")),
    (m.RegisterModel(model_id="mistral", aliases=("llama",)), (409, "CONFLICT", "aliases[0]")),
    (m.RegisterModel(model_id="mistral", context_length=-5), (400, "VALIDATION_ERROR", "context_length")),
    (m.UnassignModel(tenant_id="acme", model_id="qwen2.5"), (404, "ASSIGNMENT_NOT_FOUND", "model_id")),
])
def test_invalid_model_and_assignment_commands_name_code_and_field(catalog: Catalog, command, expected) -> None:
    assert refused(catalog, command) == expected


def test_a_new_default_assignment_takes_the_flag_from_the_previous_one(catalog: Catalog) -> None:
    run(catalog, m.AssignModel(tenant_id="acme", model_id="llama3.2", is_default=True))
    events = run(catalog, m.AssignModel(tenant_id="acme", model_id="qwen2.5", is_default=True))
    assert [(e.model_id, e.is_default) for e in events] == [("llama3.2", False), ("qwen2.5", True)]
    assert [mid for mid, a in catalog.assignments["acme"].items() if a.is_default] == ["qwen2.5"]


def test_a_model_that_is_a_fallback_cannot_be_removed_and_removal_withdraws_assignments(catalog: Catalog) -> None:
    run(catalog, m.RegisterModel(model_id="mistral", fallback_model="qwen2.5"))
    assert refused(catalog, m.RemoveModel(model_id="qwen2.5"))[:2] == (409, "CONFLICT")
    run(catalog, m.AssignModel(tenant_id="acme", model_id="mistral"))
    events = run(catalog, m.RemoveModel(model_id="mistral"))
    assert [type(e).__name__ for e in events] == ["TenantModelUnassigned", "ModelRemoved"]
    assert "mistral" not in catalog.assignments["acme"]


def test_template_registers_its_provider_and_an_endpoint_with_customisations(catalog: Catalog) -> None:
    events = run(catalog, m.ApplyTemplate(template="vllm", endpoint_id="gpu-1", base_url="http://10.0.0.5:8000",
                                          max_concurrent=8, priority=3))
    assert [type(e).__name__ for e in events] == ["ProviderRegistered", "EndpointRegistered"]
    endpoint = catalog.registered["gpu-1"]
    assert (endpoint.provider_id, endpoint.base_url, endpoint.max_concurrent, endpoint.priority) == \
        ("vllm", "http://10.0.0.5:8000", 8, 3)
    assert endpoint.api_key_ref == "${VLLM_API_KEY}" and catalog.providers["vllm"].kind == "openai-compatible"
    again = run(catalog, m.ApplyTemplate(template="vllm", endpoint_id="gpu-2", base_url="http://10.0.0.6:8000"))
    assert [type(e).__name__ for e in again] == ["EndpointRegistered"], "the provider is shared"


@pytest.mark.parametrize(("command", "expected"), [
    (m.ApplyTemplate(template="tgi", endpoint_id="x1"), (404, "TEMPLATE_NOT_FOUND", "template")),
    (m.ApplyTemplate(template="openai", endpoint_id="x1", provider_id="local"), (409, "CONFLICT", "provider_id")),
    (m.ApplyTemplate(template="ollama-local", endpoint_id="auto"), (409, "CONFLICT", "endpoint_id")),
    (m.ApplyTemplate(template="ollama-local", endpoint_id="x1", base_url="ftp://h"), (400, "INVALID_ENDPOINT",
                                                                                       "base_url")),
])
def test_template_application_refusals(catalog: Catalog, command, expected) -> None:
    assert refused(catalog, command) == expected


def test_discovered_models_serve_an_endpoint_registered_without_a_list(catalog: Catalog) -> None:
    events = run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=("llama3.2:latest", "phi4:14b")))
    assert events[0] == EndpointModelsDiscovered(endpoint_id="auto", models=("llama3.2", "phi4:14b"),
                                                 event_id=events[0].event_id, occurred_at=events[0].occurred_at)
    assert [e.model_id for e in events[1:]] == ["phi4:14b"], "only the unknown model is registered"
    assert catalog.endpoints["auto"].models == ("llama3.2", "phi4:14b")
    assert [e.endpoint_id for e in catalog.endpoints_serving("phi4:14b")] == ["auto"]
    assert run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=("phi4:14b", "llama3.2"))) == []


def test_discovery_does_not_change_what_a_pinned_endpoint_serves(catalog: Catalog) -> None:
    events = run(catalog, m.RecordDiscoveredModels(endpoint_id="pinned", models=("llama3.2", "mixtral")))
    assert [type(e).__name__ for e in events] == ["EndpointModelsDiscovered"]
    assert catalog.endpoints["pinned"].models == ("llama3.2",) and "mixtral" not in catalog.models
    assert run(catalog, m.RegisterEndpoint(endpoint_id="pinned", provider_id="local", base_url="http://127.0.0.1:1",
                                           models=("llama3.2",))) == [], "re-registering compares what was registered"


def test_batch_is_all_or_nothing_and_sees_earlier_commands(catalog: Catalog) -> None:
    events = run_all(catalog, [m.RegisterProvider(provider_id="cloud", kind="openai"),
                               m.RegisterEndpoint(endpoint_id="oai", provider_id="cloud", base_url="https://h/v1")])
    assert len(events) == 2 and "cloud" not in catalog.providers, "the catalog itself is untouched"
    with pytest.raises(ServiceError):
        run_all(catalog, [m.RegisterProvider(provider_id="cloud", kind="openai"),
                          m.RegisterEndpoint(endpoint_id="oai", provider_id="cloud", base_url="ftp://h")])


def test_import_reports_every_problem_with_its_path(catalog: Catalog) -> None:
    doc = {"endpoints": [{"id": "e1", "provider": "nowhere", "base_url": "ftp://h"}], "models": [{"id": "m", "x": 1}]}
    with pytest.raises(ServiceError) as caught:
        decide(catalog, m.ImportConfig(config=doc))
    problems = {p.path for p in caught.value.body.problems or []}
    assert problems == {"endpoints[0].provider", "endpoints[0].base_url", "models[0].x"}
    assert caught.value.body.code == "VALIDATION_ERROR" and caught.value.status == 400


def test_import_may_reference_what_the_registry_already_holds_and_twice_is_a_no_op(catalog: Catalog) -> None:
    doc = {"endpoints": [{"id": "e1", "provider": "local", "base_url": "http://h:1", "models": ["llama"]}],
           "tenants": [{"id": "beta", "models": [{"model": "qwen2.5", "default": True}]}]}
    assert len(run(catalog, m.ImportConfig(config=doc))) == 3
    assert run(catalog, m.ImportConfig(config=doc)) == []


def test_a_key_that_would_already_be_expired_is_refused(catalog: Catalog) -> None:
    from datetime import UTC, datetime, timedelta

    past = datetime.now(UTC) - timedelta(seconds=1)
    assert refused(catalog, m.IssueKey(tenant_id="acme", expires_at=past)) == (422, "VALIDATION_ERROR", "expires_at")
    naive_past = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    assert refused(catalog, m.IssueKey(tenant_id="acme", expires_at=naive_past))[2] == "expires_at"
    future = datetime.now(UTC) + timedelta(days=1)
    issued = run(catalog, m.IssueKey(tenant_id="acme", expires_at=future))
    assert [type(e) for e in issued] == [ev.KeyIssued] and issued[0].expires_at == future


PATH_ID = "/tmp/pytest-of-ci/pytest-3/models0/tiny-llama.Q8_0.gguf"


def test_a_path_advertised_as_a_model_id_is_discovered_registered_and_served(catalog: Catalog) -> None:
    events = run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=(PATH_ID, "org/m:q4@v1")))
    assert [type(e).__name__ for e in events] == ["EndpointModelsDiscovered", "ModelRegistered", "ModelRegistered"]
    assert catalog.endpoints["auto"].models == (PATH_ID, "org/m:q4@v1")
    assert [e.endpoint_id for e in catalog.endpoints_serving(PATH_ID)] == ["auto"]


def test_an_alias_names_a_path_id_and_the_endpoint_is_asked_for_the_id_it_advertises(catalog: Catalog) -> None:
    from switchyard_gateway.catalog.state import upstream_name

    run(catalog, m.RegisterModel(model_id="tiny", aliases=(PATH_ID,)))
    events = run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=(PATH_ID,)))
    assert [type(e).__name__ for e in events] == ["EndpointModelsDiscovered"], "the alias already names it"
    assert catalog.resolve_model(PATH_ID) == "tiny" and catalog.resolve_model("tiny") == "tiny"
    [endpoint] = catalog.endpoints_serving("tiny")
    assert upstream_name(endpoint, catalog.models["tiny"]) == PATH_ID
    # the other way round: the discovered path id is the model, and a short alias is added to it
    run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=("/srv/other.gguf",)))
    run(catalog, m.RegisterModel(model_id="/srv/other.gguf", aliases=("other",), mode="update"))
    assert catalog.resolve_model("other") == "/srv/other.gguf"


@pytest.mark.parametrize(("name", "reason"), [
    ("", "cannot be empty"),
    ("a" * 513, "longer than 512 characters"),
    ("evil\nmodel", "U+000A"),
    ("nul\x00", "U+0000"),
    ("right\u202eto-left", "U+202E"),
    (" padded", "white space"),
])
def test_hostile_model_ids_are_refused_with_the_reason(catalog: Catalog, name: str, reason: str) -> None:
    with pytest.raises(ServiceError) as caught:
        decide(catalog, m.RegisterModel(model_id=name))
    assert (caught.value.status, caught.value.body.code, caught.value.body.field) == (400, "VALIDATION_ERROR",
                                                                                      "model_id")
    assert reason in caught.value.body.message and len(caught.value.body.message) < 200
    assert refused(catalog, m.RegisterModel(model_id="ok", aliases=(name,))) == (400, "VALIDATION_ERROR", "aliases[0]")
    events = run(catalog, m.RecordDiscoveredModels(endpoint_id="auto", models=(name, "fine:1b")))
    assert catalog.discovered["auto"] == ("fine:1b",) and name not in catalog.models and len(events) == 2


def test_a_cached_input_price_is_kept_and_may_not_be_negative(catalog: Catalog) -> None:
    run(catalog, m.RegisterModel(model_id="cachey", input_price_per_1m=1.0, cached_input_price_per_1m=0.1))
    assert catalog.models["cachey"].cached_input_price_per_1m == 0.1
    run(catalog, m.AssignModel(tenant_id="acme", model_id="cachey", cached_input_price_per_1m=0.05))
    assert catalog.assignments["acme"]["cachey"].cached_input_price_per_1m == 0.05
    assert refused(catalog, m.RegisterModel(model_id="x", cached_input_price_per_1m=-1)) == (
        400, "VALIDATION_ERROR", "cached_input_price_per_1m")
    assert refused(catalog, m.AssignModel(tenant_id="acme", model_id="qwen2.5", cached_input_price_per_1m=-1))[2] == \
        "cached_input_price_per_1m"


def test_a_revoked_key_stays_revoked_when_its_secret_is_supplied_again(catalog: Catalog) -> None:
    """`up` issues SWITCHYARD_ADMIN_KEY (and the demo key) again at every start, from keys.env: a key an operator
    revoked through the API came back to life at the next start. Its secret is now refused, so is its id."""
    secret = "sy_admin0a1b_" + "x" * 32
    first = run(catalog, m.IssueKey(tenant_id="acme", role="admin", secret=secret))
    assert run(catalog, m.IssueKey(tenant_id="acme", role="admin", secret=secret)) == []     # idempotent while live
    run(catalog, m.RevokeKey(key_id=first[0].key_id))
    assert refused(catalog, m.IssueKey(tenant_id="acme", role="admin", secret=secret)) == (409, "KEY_REVOKED",
                                                                                             "secret")
    assert catalog.authenticate(secret) is None
    assert run(catalog, m.IssueKey(tenant_id="acme", role="admin", secret="sy_admin0c2d_" + "y" * 32))


def test_an_update_made_from_a_state_the_resource_no_longer_has_is_refused(catalog: Catalog) -> None:
    read = catalog.registered["auto"]
    run(catalog, m.RegisterEndpoint(endpoint_id="auto", provider_id="local", base_url="http://127.0.0.1:2",
                                    priority=5, mode="update", if_match=str(read.event_id)))
    assert refused(catalog, m.RegisterEndpoint(endpoint_id="auto", provider_id="local", base_url="http://127.0.0.1:2",
                                               weight=9, mode="update", if_match=str(read.event_id))) \
        == (409, "CHANGED", None)
    assert catalog.registered["auto"].priority == 5 and catalog.registered["auto"].weight == 1


@pytest.mark.parametrize("name", ["line\nbreak", "nul\x00", "\x1b[31mred", "\u202eevil", "zero\u200bwidth"])
def test_a_display_name_with_control_or_format_characters_is_refused(catalog: Catalog, name: str) -> None:
    """Stored and shown as given, a display name with a bidi override or an escape sequence misleads whoever
    reads it in the console or a terminal; users' names were checked, tenants' and providers' were not."""
    assert refused(catalog, m.CreateTenant(tenant_id="shown", display_name=name))[2] == "display_name"
    assert refused(catalog, m.RegisterProvider(provider_id="shown", kind="ollama", display_name=name))[2] == \
        "display_name"
    assert refused(catalog, m.ApplyTemplate(template="vllm", endpoint_id="shown-e", display_name=name))[2] == \
        "display_name"


@pytest.mark.parametrize("secret", ["sixteen chars with spaces", "sy_line_break_0123456789\n", "sy_cafe\u00e9_0123456789"])
def test_a_supplied_key_that_no_header_can_carry_is_refused(catalog: Catalog, secret: str) -> None:
    assert refused(catalog, m.IssueKey(tenant_id="acme", secret=secret)) == (400, "VALIDATION_ERROR", "secret")


def test_the_operators_tenant_cannot_be_removed(catalog: Catalog) -> None:
    """Removing it took the bootstrap admin key with it: no admin left until a restart issued it again."""
    run(catalog, m.CreateTenant(tenant_id="admin"))
    assert refused(catalog, m.RemoveTenant(tenant_id="admin")) == (409, "CONFLICT", "tenant_id")
    assert run(catalog, m.RemoveTenant(tenant_id="acme"))


def test_a_new_model_cannot_take_a_name_another_model_already_answers_to(catalog: Catalog) -> None:
    """A model named `llama` (another's alias) was recorded, and calls by that name then reached the new model,
    which no endpoint serves: 404. An alias naming an existing id was already a 409; now the id is too."""
    assert refused(catalog, m.RegisterModel(model_id="llama", mode="create")) == (409, "CONFLICT", "model_id")
    assert refused(catalog, m.RegisterModel(model_id="llama")) == (409, "CONFLICT", "model_id")      # upsert too
    assert refused(catalog, m.RegisterModel(model_id="qwen2.5:latest")) == (409, "CONFLICT", "model_id")
    assert catalog.resolve_model("llama") == "llama3.2"
    assert run(catalog, m.RegisterModel(model_id="llama3.2", context_length=8192, mode="update"))  # its own id: fine


def test_a_fallback_cycle_is_refused_naming_it(catalog: Catalog) -> None:
    run(catalog, m.RegisterModel(model_id="loop-a"))
    run(catalog, m.RegisterModel(model_id="loop-b", fallback_model="loop-a"))
    with pytest.raises(ServiceError) as caught:
        decide(catalog, m.RegisterModel(model_id="loop-a", fallback_model="loop-b", mode="update"))
    assert (caught.value.status, caught.value.body.code, caught.value.body.field) == \
        (422, "VALIDATION_ERROR", "fallback_model")
    assert "'loop-a' -> 'loop-b' -> 'loop-a'" in caught.value.body.message
    run(catalog, m.RegisterModel(model_id="loop-c", fallback_model="loop-b"))
    assert refused(catalog, m.RegisterModel(model_id="loop-a", fallback_model="loop-c"))[:2] == \
        (422, "VALIDATION_ERROR"), "a longer one too"
    assert run(catalog, m.RegisterModel(model_id="loop-a", fallback_model="qwen2.5")), "a chain that ends is fine"


def test_a_tenants_fallbacks_may_not_close_a_cycle_either(catalog: Catalog) -> None:
    """Failover follows a tenant's assignment's fallback before the model's own: a cycle can run through both."""
    run(catalog, m.RegisterModel(model_id="qwen2.5", fallback_model="llama3.2"))
    assert refused(catalog, m.AssignModel(tenant_id="acme", model_id="llama", fallback_model="qwen2.5")) == \
        (422, "VALIDATION_ERROR", "fallback_model")
    run(catalog, m.RegisterModel(model_id="phi"))
    run(catalog, m.AssignModel(tenant_id="acme", model_id="qwen2.5", fallback_model="phi"))
    run(catalog, m.AssignModel(tenant_id="acme", model_id="llama3.2", fallback_model="qwen2.5"))   # ends at phi
    assert refused(catalog, m.UnassignModel(tenant_id="acme", model_id="qwen2.5")) == \
        (422, "VALIDATION_ERROR", "model_id"), "without its choice, qwen2.5 falls back to llama3.2 again"
    assert refused(catalog, m.RegisterModel(model_id="phi", fallback_model="llama3.2"))[:2] == \
        (422, "VALIDATION_ERROR"), "the tenant's chain llama3.2 -> qwen2.5 -> phi would come back"


def test_an_import_checks_fallback_cycles_in_the_state_it_ends_in(catalog: Catalog) -> None:
    """Models may name one another in any order; only a cycle is refused, not a state passed through."""
    run(catalog, m.RegisterModel(model_id="qwen2.5", fallback_model="llama3.2"))
    doc = {"models": [{"id": "loop-b", "fallback": "loop-a"}, {"id": "loop-a"},
                      {"id": "llama3.2", "aliases": ["llama"], "fallback": "qwen2.5"}, {"id": "qwen2.5"}]}
    events = run(catalog, m.ImportConfig(config=doc))
    assert {e.model_id: e.fallback_model for e in events} == {"loop-a": "", "loop-b": "loop-a",
                                                                "qwen2.5": "", "llama3.2": "qwen2.5"}
    with pytest.raises(ServiceError) as caught:
        decide(catalog, m.ImportConfig(config={"models": [{"id": "loop-a", "fallback": "loop-b"}]}))
    assert caught.value.status == 400 and caught.value.body.problems is not None
    assert [(p.path, "'loop-a' -> 'loop-b' -> 'loop-a'" in p.message) for p in caught.value.body.problems] == \
        [("models[0].fallback", True)]
    with pytest.raises(ServiceError) as caught:        # past the document's own check, the batch's is the same
        run_all(catalog, [m.RegisterModel(model_id="loop-a", fallback_model="loop-b")])
    assert (caught.value.status, caught.value.body.field) == (422, "fallback_model")


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:18712/v1?api_key=sk-x", "http://127.0.0.1:18712/v1#x",
                                      "http://127.0.0.1:18712/v1?", "ftp://h/v1?api_key=sk-x"])
def test_a_base_url_with_a_query_or_fragment_is_refused_without_echoing_it(catalog: Catalog, base_url: str) -> None:
    with pytest.raises(ServiceError) as caught:
        decide(catalog, m.RegisterEndpoint(endpoint_id="q1", provider_id="local", base_url=base_url))
    assert (caught.value.status, caught.value.body.code, caught.value.body.field) == (400, "INVALID_ENDPOINT",
                                                                                      "base_url")
    assert "query string or fragment" in caught.value.body.message and "sk-x" not in caught.value.body.message


def test_a_name_listed_twice_is_refused_naming_the_second(catalog: Catalog) -> None:
    assert refused(catalog, m.RegisterEndpoint(endpoint_id="d1", provider_id="local", base_url="http://h:1",
                                               models=("a", "b", "a"))) == (400, "VALIDATION_ERROR", "models[2]")
    assert refused(catalog, m.ApplyTemplate(template="vllm", endpoint_id="d2", models=("a", "a"))) == \
        (400, "VALIDATION_ERROR", "models[1]")
    assert refused(catalog, m.RegisterModel(model_id="mistral", aliases=("m", "m"))) == \
        (400, "VALIDATION_ERROR", "aliases[1]")
