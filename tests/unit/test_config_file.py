"""switchyard.yaml: every problem reported with its path; documents become commands and come back by export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from switchyard_gateway.catalog.state import Catalog
from switchyard_gateway.catalog import document as config_file
from switchyard_gateway.services.registry.decide import run_all

GOOD = """
providers:
  - {id: local, kind: ollama}
  - {id: gpu, kind: openai-compatible, display_name: vLLM box}
endpoints:
  - {id: ollama-1, provider: local, base_url: "http://127.0.0.1:11434", priority: 10, max_concurrent: 4}
  - {id: vllm-1, provider: gpu, base_url: "https://gpu.internal:8000/v1", api_key: "${VLLM_KEY}",
     models: [llama3.2], weight: 2, timeout_s: 60}
models:
  - {id: llama3.2, aliases: ["llama3.2:latest"], context_length: 131072, input_price_per_1m: 0.05, fallback: qwen2.5}
  - {id: qwen2.5, kind: chat}
  - {id: nomic-embed-text, kind: embedding}
  - {id: "/models/tiny.gguf", aliases: [tiny], input_price_per_1m: 1.0, cached_input_price_per_1m: 0.1}
tenants:
  - id: acme
    all_models: false
    fallback_on_quota: true
    models:
      - {model: llama3.2, default: true, priority: 5, input_price_per_1m: 0.2, fallback: qwen2.5}
      - {model: nomic-embed-text, enabled: false}
      - {model: tiny, cached_input_price_per_1m: 0.05}
"""


def problems_of(text: str) -> dict[str, str]:
    doc, problems = config_file.parse(text)
    problems = problems or config_file.validate(doc)
    return {p.path: p.message for p in problems}


def test_a_good_document_has_no_problems() -> None:
    assert problems_of(GOOD) == {}


@pytest.mark.parametrize(("text", "path", "needle"), [
    ("endpoints: [{id: e1, provider: pp, base_url: 'ftp://h:1'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "scheme must be http or https"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h:70000'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "port outside 1-65535"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h:0'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "port outside 1-65535"),
    ("endpoints: [{id: e1, provider: nowhere, base_url: 'http://h'}]", "endpoints[0].provider",
     "provider 'nowhere' is not defined"),
    ("models: [{id: a, fallback: b}]", "models[0].fallback", "model 'b' is not defined"),
    ("tenants: [{id: t1, models: [{model: ghost}]}]", "tenants[0].models[0].model", "model 'ghost' is not defined"),
    ("providers: [{id: pp, kind: ollama}, {id: pp, kind: openai}]", "providers[1].id", "duplicate identifier 'pp'"),
    ("models: [{id: aa}, {id: bb, aliases: [aa]}]", "models[1].aliases[0]", "duplicate identifier"),
    ("tenants: [{id: t1, models: [{model: a}, {model: a}]}]\nmodels: [{id: a}]", "tenants[0].models[1].model",
     "duplicate identifier"),
    ("providers: [{id: 'No Way', kind: ollama}]", "providers[0].id", "not a valid identifier"),
    ("providers: [{id: pp, kind: tgi}]", "providers[0].kind", "not one of ollama, openai-compatible, openai"),
    ("providers: [{id: pp, kind: ollama, colour: red}]", "providers[0].colour", "unknown key 'colour'"),
    ("providers: [{id: pp}]", "providers[0].kind", "'kind' is required"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h', priority: high}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].priority", "expected int"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h', api_key: sk-live-abc}]\n"
     "providers: [{id: pp, kind: ollama}]", "endpoints[0].api_key", "environment reference"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://[::1'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "cannot be read"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h/v 1'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "space or a control character"),
    ("endpoints: [{id: e1, provider: pp, base_url: \"http://h/v1\\r\\nX-Injected: 1\"}]\n"
     "providers: [{id: pp, kind: ollama}]", "endpoints[0].base_url", "space or a control character"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://ops:hunter2@h/v1'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "must not carry a user or password"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h', api_key: '${SWITCHYARD_JWT_SECRET}'}]\n"
     "providers: [{id: pp, kind: ollama}]", "endpoints[0].api_key", "Switchyard's own settings"),
    ("models: [{id: a, input_price_per_1m: -1}]", "models[0].input_price_per_1m", "cannot be negative"),
    ("models: [{id: a, cached_input_price_per_1m: -1}]", "models[0].cached_input_price_per_1m", "cannot be negative"),
    ("models: [{id: \"bad\\nname\"}]", "models[0].id", "U+000A"),
    ("models: [{id: a, capabilities: [tools, flying]}]", "models[0].capabilities[1]",
     "'flying' is not one of completion, tools"),
    ("models: [{id: a, capabilities: [tools, vision, tools]}]", "models[0].capabilities[2]", "'tools' is named twice"),
    ("routes: []", "routes", "unknown section"),
    ("providers: [\n", "line 2, column 1", "not valid YAML"),
])
def test_each_problem_class_is_reported_at_its_path(text: str, path: str, needle: str) -> None:
    found = problems_of(text)
    assert path in found, found
    assert needle in found[path]


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = ("providers: [{id: pp, kind: ollama}, {id: pp, kind: ollama}]\n"
            "endpoints: [{id: e1, provider: q, base_url: 'ftp://h'}, {id: e2, provider: pp, base_url: 'http://h:99999'}]")
    assert set(problems_of(text)) == {"providers[1].id", "endpoints[0].provider", "endpoints[0].base_url",
                                      "endpoints[1].base_url"}


def test_a_secret_in_the_file_is_refused_without_being_echoed() -> None:
    found = problems_of("endpoints: [{id: e1, provider: pp, base_url: 'http://h', api_key: sk-live-7f3a}]\n"
                        "providers: [{id: pp, kind: ollama}]")
    assert "sk-live-7f3a" not in " ".join(found.values())


def test_document_round_trips_through_the_registry_and_export() -> None:
    doc, _ = config_file.parse(GOOD)
    catalog = Catalog()
    for event in run_all(catalog, config_file.to_commands(doc)):
        catalog.apply(event)
    assert catalog.assignments["acme"]["llama3.2"].input_price_per_1m == 0.2
    assert catalog.models["/models/tiny.gguf"].cached_input_price_per_1m == 0.1
    assert catalog.assignments["acme"]["/models/tiny.gguf"].cached_input_price_per_1m == 0.05
    assert catalog.tenants["acme"].fallback_on_quota is True
    exported = config_file.export(catalog)
    again = Catalog()
    for event in run_all(again, config_file.to_commands(exported)):
        again.apply(event)
    assert config_file.export(again) == exported
    assert run_all(catalog, config_file.to_commands(exported)) == [], "applying the export changes nothing"


def test_models_are_registered_after_their_fallbacks_whatever_the_file_order() -> None:
    doc = {"models": [{"id": "a", "fallback": "b"}, {"id": "b", "fallback": "c-alias"}, {"id": "c", "aliases": ["c-alias"]}]}
    assert [c.model_id for c in config_file.to_commands(doc)] == ["c", "b", "a"]  # type: ignore[attr-defined]


def test_config_validate_command_prints_each_problem_and_exits_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "switchyard.yaml"
    bad.write_text("providers: [{id: pp, kind: ollama}]\nendpoints: [{id: e1, provider: x, base_url: 'http://h:0'}]\n")
    run = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "config", "validate", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"{bad}: endpoints[0].provider: provider 'x' is not defined" in run.stdout
    assert f"{bad}: endpoints[0].base_url:" in run.stdout and "2 problem(s)" in run.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    ok = subprocess.run([sys.executable, "-m", "switchyard_gateway.cli", "config", "validate", str(good)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "OK (2 providers, 2 endpoints, 4 models, 1 tenants)" in ok.stdout


def test_a_password_in_a_url_is_refused_without_being_echoed() -> None:
    found = problems_of("endpoints: [{id: e1, provider: pp, base_url: 'http://ops:hunter2@h/v1'}]\n"
                        "providers: [{id: pp, kind: ollama}]")
    assert found and "hunter2" not in " ".join(found.values())


def test_no_reference_reads_switchyards_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint recorded before the registry refused such references still never sends the gateway's own
    secrets (its JWT secret, its database URL) to the URL it names; its own upstream key is read as before."""
    from switchyard_gateway.catalog.rules import read_credential
    monkeypatch.setenv("SWITCHYARD_JWT_SECRET", "signing-secret")
    monkeypatch.setenv("switchyard_lower", "also-ours")
    monkeypatch.setenv("VLLM_API_KEY", "upstream-key")
    assert read_credential("${SWITCHYARD_JWT_SECRET}") is None
    assert read_credential("${switchyard_lower}") is None
    assert read_credential("${VLLM_API_KEY}") == "upstream-key"
    assert read_credential("") is None


@pytest.mark.parametrize(("text", "path", "needle"), [
    ("models: [{id: a, fallback: b}, {id: b, fallback: a}]", "models[0].fallback", "fallback cycle: 'a' -> 'b' -> 'a'"),
    ("models: [{id: a, fallback: b}, {id: b, fallback: c}, {id: c, aliases: [cc], fallback: 'a:latest'}]",
     "models[0].fallback", "'a' -> 'b' -> 'c' -> 'a'"),
    ("models: [{id: a, fallback: b}, {id: b}]\ntenants: [{id: t1, models: [{model: b, fallback: a}]}]",
     "tenants[0].models[0].fallback", "fallback cycle for tenant 't1': 'b' -> 'a' -> 'b'"),
    ("models: [{id: llama3.2, aliases: ['llama3.2:latest']}, {id: 'llama3.2:latest'}]", "models[0].aliases[0]",
     "already names model 'llama3.2:latest'"),
    ("models: [{id: qwen2.5}, {id: 'qwen2.5:latest'}]", "models[1].id", "already names model 'qwen2.5'"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h/v1?api_key=sk-x'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "query string or fragment"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h/v1#x'}]\nproviders: [{id: pp, kind: ollama}]",
     "endpoints[0].base_url", "query string or fragment"),
    ("endpoints: [{id: e1, provider: pp, base_url: 'http://h', models: [a, b, a]}]\n"
     "providers: [{id: pp, kind: ollama}]", "endpoints[0].models[2]", "listed twice (first at models[0])"),
    ("models: [{id: a, aliases: [x, '', x]}]", "models[0].aliases[2]", "listed twice (first at aliases[0])"),
])
def test_cycles_taken_names_queries_and_repeats_are_reported_at_their_path(text: str, path: str, needle: str) -> None:
    found = problems_of(text)
    assert path in found, found
    assert needle in found[path]
    assert "sk-x" not in " ".join(found.values())


def test_a_cycle_is_reported_once_and_models_may_name_later_ones() -> None:
    assert list(problems_of("models: [{id: a, fallback: b}, {id: b, fallback: a}]")) == ["models[0].fallback"]
    assert problems_of("models: [{id: a, fallback: 'b:latest'}, {id: b, fallback: c}, {id: c}]") == {}


def test_a_document_checked_against_the_registry_sees_its_names_and_chains() -> None:
    """On import a document's models meet the registry's: a new id that is an alias there, a fallback closing a
    cycle through a model the document does not name, or through a tenant's own choices; and a document that turns
    a chain round is applied, though half-applied it would be a cycle."""
    catalog = Catalog()
    for event in run_all(catalog, config_file.to_commands(config_file.parse(GOOD)[0])):
        catalog.apply(event)
    known = config_file.Known.of(catalog)

    def problems(doc: dict) -> dict[str, str]:
        return {p.path: p.message for p in config_file.validate(doc, known)}

    assert problems({"models": [{"id": "llama3.2:latest"}]}) == {
        "models[0].id": "'llama3.2:latest' already names model 'llama3.2'"}
    assert "'qwen2.5' -> 'llama3.2' -> 'qwen2.5'" in problems({"models": [{"id": "qwen2.5", "fallback": "llama3.2"}]})[
        "models[0].fallback"]
    through_acme = problems({"models": [{"id": "qwen2.5", "fallback": "tiny"}],
                             "tenants": [{"id": "acme", "models": [{"model": "tiny", "fallback": "llama3.2"}]}]})
    assert list(through_acme) == ["tenants[0].models[0].fallback"]
    assert "for tenant 'acme': '/models/tiny.gguf' -> 'llama3.2' -> 'qwen2.5' -> '/models/tiny.gguf'" in \
        through_acme["tenants[0].models[0].fallback"]
    assert config_file.validate(config_file.export(catalog), known) == [], "the registry's own export validates"

    turned = {"models": [{"id": "llama3.2", "aliases": ["llama3.2:latest"]}, {"id": "qwen2.5", "fallback": "llama3.2"}],
              "tenants": [{"id": "acme", "all_models": False, "fallback_on_quota": True,
                           "models": [{"model": "llama3.2", "default": True}]}]}
    assert problems(turned) == {}
    events = run_all(catalog, config_file.to_commands(turned))    # qwen2.5 -> llama3.2 while acme still chose qwen2.5
    assert [(type(e).__name__, e.model_id) for e in events] == [   # type: ignore[attr-defined]
        ("ModelRegistered", "llama3.2"), ("ModelRegistered", "qwen2.5"), ("TenantModelAssigned", "llama3.2")]


@pytest.mark.parametrize(("text", "where", "key"), [
    ("tenants:\n  - tenant_id: a\nmodels: []\ntenants:\n  - tenant_id: b\n", "line 4, column 1", "tenants"),
    ("tenants:\n  - tenant_id: a\n    display_name: x\n    display_name: y\n", "line 4, column 5", "display_name"),
    ('{"tenants": [], "tenants": [{"tenant_id": "b"}]}', "(document)", "tenants"),
])
def test_a_key_given_twice_is_refused_not_silently_the_last(text: str, where: str, key: str) -> None:
    """`tenants:` twice kept only the second list, and `config validate` said OK."""
    doc, problems = config_file.parse(text)
    assert doc == {} and [p.path for p in problems] == [where]
    assert f"the key '{key}' is given twice" in problems[0].message


def test_merge_keys_may_repeat_as_yaml_allows() -> None:
    doc, problems = config_file.parse("d: &d {a: 1}\ne: &e {c: 3}\nx: {<<: *d, <<: *e, b: 2}\n")
    assert problems == [] and doc["x"] == {"a": 1, "b": 2, "c": 3}
