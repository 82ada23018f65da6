"""The admin API of `switchyard up --demo`: validation codes, conflicts, updates, templates, endpoint tests,
registry status, refresh, export and import. Every test works on identifiers of its own."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import yaml

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack


async def api(demo: DemoStack, method: str, path: str, body: object = None, *, content: str | None = None,
              content_type: str | None = None, params: dict[str, str] | None = None) -> httpx.Response:
    """One admin call; async, so that in-process simulators keep answering meanwhile."""
    headers = {"X-API-Key": demo.admin_key, **({"Content-Type": content_type} if content_type else {})}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.request(method, f"{demo.url}/api/admin{path}", json=body, content=content,
                                    params=params, headers=headers)


def ok(response: httpx.Response) -> dict:
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
async def tag(demo: DemoStack) -> AsyncIterator[str]:
    """This test's identifiers contain it; endpoints left behind are removed (the demo's /health counts them)."""
    tag = uuid.uuid4().hex[:8]
    yield tag
    for endpoint in (await api(demo, "GET", "/endpoints")).json():
        if tag in endpoint["endpoint_id"]:
            await api(demo, "DELETE", f"/endpoints/{endpoint['endpoint_id']}")


@pytest.fixture
async def provider(demo: DemoStack, tag: str) -> str:
    ok(await api(demo, "POST", "/providers", {"provider_id": f"p-{tag}", "kind": "openai-compatible"}))
    return f"p-{tag}"


CASES = [
    ("POST", "/providers", {"provider_id": "Not An Id!", "kind": "ollama"}, 400, "INVALID_IDENTIFIER", "provider_id"),
    ("POST", "/providers", {"provider_id": "p-{tag}-x", "kind": "tgi"}, 400, "VALIDATION_ERROR", "kind"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "nope-{tag}", "base_url": "http://h:1"},
     404, "PROVIDER_NOT_FOUND", "provider_id"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "ftp://h:1"},
     400, "INVALID_ENDPOINT", "base_url"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://h:70000"},
     400, "INVALID_ENDPOINT", "base_url"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://h:1",
                            "api_key_ref": "sk-live-0123456789"}, 400, "VALIDATION_ERROR", "api_key_ref"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://h:1",
                            "max_concurrent": -1}, 400, "VALIDATION_ERROR", "max_concurrent"),
    ("POST", "/models", {"model_id": "m-{tag}", "fallback_model": "nope-{tag}"}, 404, "MODEL_NOT_FOUND",
     "fallback_model"),
    ("POST", "/models", {"model_id": "m-{tag}", "input_price_per_1m": -0.5}, 400, "VALIDATION_ERROR",
     "input_price_per_1m"),
    ("POST", "/models", {"model_id": "m-{tag}\nX-Injected: 1"}, 400, "VALIDATION_ERROR", "model_id"),
    ("POST", "/models", {"model_id": ""}, 400, "VALIDATION_ERROR", "model_id"),
    ("POST", "/models", {"model_id": "m" * 600}, 400, "VALIDATION_ERROR", "model_id"),
    ("POST", "/models", {"model_id": "m-{tag}", "aliases": ["ok", "bidi\u202e"]}, 400, "VALIDATION_ERROR",
     "aliases[1]"),
    ("POST", "/models", {"model_id": "m-{tag}", "cached_input_price_per_1m": -1}, 400, "VALIDATION_ERROR",
     "cached_input_price_per_1m"),
    ("POST", "/tenants/demo/models", {"model_id": "nope-{tag}"}, 404, "MODEL_NOT_FOUND", "model_id"),
    ("POST", "/templates/tgi/apply", {"endpoint_id": "e-{tag}"}, 404, "TEMPLATE_NOT_FOUND", "template"),
    *(("POST", "/templates/vllm/apply", {"endpoint_id": "e-{tag}", "customizations": falsy}, 400, "VALIDATION_ERROR",
       "customizations") for falsy in (0, False, [], "")),             # were taken as no customizations
    ("GET", "/providers/nope-{tag}", None, 404, "PROVIDER_NOT_FOUND", "id"),
    ("GET", "/models/nope-{tag}", None, 404, "MODEL_NOT_FOUND", "id"),
    ("GET", "/templates/nope", None, 404, "TEMPLATE_NOT_FOUND", "id"),
    ("PUT", "/providers/nope-{tag}", {"display_name": "x"}, 404, "PROVIDER_NOT_FOUND", "id"),
    ("POST", "/endpoints/nope-{tag}/test", None, 404, "ENDPOINT_NOT_FOUND", "endpoint_id"),
    # a misspelt field changed nothing and answered 200; the fields a GET shows may come back in a PUT
    ("POST", "/providers", {"provider_id": "p-{tag}-y", "kind": "ollama", "display_nme": "typo"}, 400,
     "UNKNOWN_FIELD", "display_nme"),
    ("PUT", "/providers/{provider}", {"display_nme": "typo"}, 400, "UNKNOWN_FIELD", "display_nme"),
    ("POST", "/tenants", {"tenant_id": "t-{tag}", "display_name": "\u202eevil"}, 400, "VALIDATION_ERROR",
     "display_name"),
    ("POST", "/tenants", {"tenant_id": "t-{tag}", "display_name": " \u3000 "}, 400, "VALIDATION_ERROR",
     "display_name"),                                       # white space alone was taken, and shown as nothing
    ("POST", "/providers", {"provider_id": "p-{tag}-w", "kind": "ollama", "display_name": "  "}, 400,
     "VALIDATION_ERROR", "display_name"),
    ("GET", "/tenants/nope-{tag}/keys", None, 404, "TENANT_NOT_FOUND", "tenant_id"),
    ("GET", "/tenants/nope-{tag}/limits", None, 404, "TENANT_NOT_FOUND", "tenant_id"),
    ("DELETE", "/tenants/admin", None, 409, "CONFLICT", "tenant_id"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://127.0.0.1:1",
                            "api_key_ref": "${{SWITCHYARD_JWT_SECRET}}"}, 400, "VALIDATION_ERROR", "api_key_ref"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}",
                            "base_url": "http://ops:hunter2@127.0.0.1:1"}, 400, "INVALID_ENDPOINT", "base_url"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://[::1"},
     400, "INVALID_ENDPOINT", "base_url"),
    # the demo model llama3.2 answers to llama3.2:latest: a model of that name was created and hid it (404s)
    ("POST", "/models", {"model_id": "llama3.2:latest"}, 409, "CONFLICT", "model_id"),
    # calls append their own path to base_url; a query's secret would be stored in events
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}",
                            "base_url": "http://127.0.0.1:18712/v1?api_key=sk-x"}, 400, "INVALID_ENDPOINT", "base_url"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}",
                            "base_url": "http://127.0.0.1:18712/v1#x"}, 400, "INVALID_ENDPOINT", "base_url"),
    ("POST", "/endpoints", {"endpoint_id": "e-{tag}", "provider_id": "{provider}", "base_url": "http://127.0.0.1:9",
                            "models": ["a", "a"]}, 400, "VALIDATION_ERROR", "models[1]"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"), CASES,
                         ids=[f"{c[0]} {c[1]} {c[4]}" for c in CASES])
async def test_admin_validation_returns_the_exact_codes(demo: DemoStack, tag: str, provider: str, method: str, path: str,
                                                  body: dict | None, status: int, code: str, field: str) -> None:
    def fill(value: object) -> object:
        return value.format(tag=tag, provider=provider) if isinstance(value, str) else value
    body = {k: fill(v) for k, v in body.items()} if body is not None else None
    response = await api(demo, method, str(fill(path)), body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field) and error["message"]


async def test_creating_what_exists_is_a_conflict_and_put_updates_only_what_it_names(demo: DemoStack, tag: str,
                                                                                 provider: str) -> None:
    duplicate = await api(demo, "POST", "/providers", {"provider_id": provider, "kind": "openai-compatible"})
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "CONFLICT"
    endpoint = {"endpoint_id": f"e-{tag}", "provider_id": provider, "base_url": "http://127.0.0.1:9", "models": ["a1"]}
    assert (await api(demo, "POST", "/endpoints", endpoint)).status_code == 201
    assert (await api(demo, "POST", "/endpoints", endpoint)).status_code == 409
    for path, body in (("/models", {"model_id": f"m-{tag}"}), ("/tenants", {"tenant_id": f"t-{tag}"})):
        assert (await api(demo, "POST", path, body)).status_code == 201
        assert ((await api(demo, "POST", path, body))).json()["error"]["code"] == "CONFLICT"

    updated = ok(await api(demo, "PUT", f"/endpoints/e-{tag}", {"priority": 7, "max_concurrent": 3}))
    assert updated["changed"] is True
    shown = ok(await api(demo, "GET", f"/endpoints/e-{tag}"))
    assert (shown["priority"], shown["max_concurrent"], shown["base_url"], shown["models"]) == \
        (7, 3, "http://127.0.0.1:9", ["a1"])
    assert ok(await api(demo, "PUT", f"/endpoints/e-{tag}", {"priority": 7}))["changed"] is False


async def test_deleting_a_provider_still_in_use_is_a_conflict(demo: DemoStack, tag: str, provider: str) -> None:
    ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"e-{tag}", "provider_id": provider,
                                        "base_url": "http://127.0.0.1:9"}))
    refused = await api(demo, "DELETE", f"/providers/{provider}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "CONFLICT" and f"e-{tag}" in refused.json()["error"]["message"]
    ok(await api(demo, "DELETE", f"/endpoints/e-{tag}"))
    ok(await api(demo, "DELETE", f"/providers/{provider}"))
    assert (await api(demo, "GET", f"/providers/{provider}")).status_code == 404


async def test_tenant_model_assignment_carries_default_priority_price_and_fallback(demo: DemoStack, tag: str) -> None:
    ok(await api(demo, "POST", "/models", {"model_id": f"small-{tag}"}))
    ok(await api(demo, "POST", "/models", {"model_id": f"big-{tag}", "fallback_model": f"small-{tag}"}))
    ok(await api(demo, "POST", "/tenants", {"tenant_id": f"t-{tag}", "all_models": False, "fallback_on_quota": True}))
    created = await api(demo, "POST", f"/tenants/t-{tag}/models", {
        "model_id": f"big-{tag}", "is_default": True, "priority": 5, "input_price_per_1m": 0.4,
        "output_price_per_1m": 1.2, "fallback_model": f"small-{tag}"})
    assert created.status_code == 201, created.text
    assert (await api(demo, "POST", f"/tenants/t-{tag}/models", {"model_id": f"big-{tag}"})).status_code == 409
    ok(await api(demo, "PUT", f"/tenants/t-{tag}/models/big-{tag}", {"priority": 9}))
    shown = ok(await api(demo, "GET", f"/tenants/t-{tag}/models/big-{tag}"))
    assert (shown["is_default"], shown["priority"], shown["input_price_per_1m"], shown["output_price_per_1m"],
            shown["fallback_model"]) == (True, 9, 0.4, 1.2, f"small-{tag}")
    assert ok(await api(demo, "GET", f"/tenants/t-{tag}"))["fallback_on_quota"] is True
    ok(await api(demo, "DELETE", f"/tenants/t-{tag}/models/big-{tag}"))
    assert ok(await api(demo, "GET", f"/tenants/t-{tag}/models")) == []


async def test_template_apply_registers_provider_and_endpoint_with_customisations(demo: DemoStack, tag: str) -> None:
    names = {t["name"] for t in ok(await api(demo, "GET", "/templates"))}
    assert {"ollama-local", "vllm", "llama-cpp", "openai", "lm-studio", "litellm"} <= names
    async with Simulator(SimConfig(models=(f"tm-{tag}",))) as sim:
        applied = await api(demo, "POST", "/templates/vllm/apply", {
            "endpoint_id": f"gpu-{tag}", "provider_id": f"vllm-{tag}",
            "customizations": {"base_url": sim.url, "max_concurrent": 4, "priority": 2, "models": [f"tm-{tag}"]}})
        assert applied.status_code == 201, applied.text
        endpoint = ok(await api(demo, "GET", f"/endpoints/gpu-{tag}"))
        assert (endpoint["provider_id"], endpoint["base_url"], endpoint["max_concurrent"], endpoint["priority"],
                endpoint["api_key_ref"]) == (f"vllm-{tag}", sim.url, 4, 2, "${VLLM_API_KEY}")
        assert ok(await api(demo, "GET", f"/providers/vllm-{tag}"))["kind"] == "openai-compatible"
        tested = ok(await api(demo, "POST", f"/endpoints/gpu-{tag}/test"))
        assert tested["success"] is True and tested["models"] == [f"tm-{tag}"], tested
        ok(await api(demo, "DELETE", f"/endpoints/gpu-{tag}"))


async def test_endpoint_test_reports_a_refused_connection_with_its_error_and_a_live_one_with_latency(
        demo: DemoStack, tag: str, provider: str) -> None:
    async with Simulator(SimConfig(models=(f"lm-{tag}",))) as sim:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"e-{tag}", "provider_id": provider, "base_url": sim.url,
                                            "models": [f"lm-{tag}"]}))
        live = ok(await api(demo, "POST", f"/endpoints/e-{tag}/test"))
        assert live["success"] is True and live["latency_ms"] > 0 and live["error"] is None
        assert sim.stats.requests.get("/v1/models", 0) >= 1 and "/v1/chat/completions" not in sim.stats.requests
        sim.configure(failure_kind="refuse", failure_rate=1.0)
        dead = ok(await api(demo, "POST", f"/endpoints/e-{tag}/test"))
    assert dead["success"] is False and "connection refused" in dead["error"] and dead["code"] == "CONNECTIVITY_ERROR"
    whole = ok(await api(demo, "POST", f"/providers/{provider}/test"))      # the provider's test names what failed
    assert whole["success"] is False and whole["code"] == "CONNECTIVITY_ERROR" and f"e-{tag}" in whole["error"]
    ok(await api(demo, "DELETE", f"/endpoints/e-{tag}"))
    bare = f"bare-{tag}"
    ok(await api(demo, "POST", "/providers", {"provider_id": bare, "kind": "ollama"}))
    empty = ok(await api(demo, "POST", f"/providers/{bare}/test"))          # it said only `success: false`
    assert (empty["success"], empty["code"], empty["endpoints"]) == (False, "CONNECTIVITY_ERROR", [])
    assert "no endpoints" in empty["error"]
    ok(await api(demo, "DELETE", f"/providers/{bare}"))


async def test_refresh_discovers_models_and_status_shows_counts_and_health(demo: DemoStack, tag: str) -> None:
    ok(await api(demo, "POST", "/providers", {"provider_id": f"o-{tag}", "kind": "ollama"}))
    models = (f"disc-{tag}", f"disc-embed-{tag}:v1")
    async with Simulator(SimConfig(models=models, loaded=(models[0],))) as sim:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"auto-{tag}", "provider_id": f"o-{tag}",
                                            "base_url": sim.url}))
        refreshed = ok(await api(demo, "POST", "/registry/refresh"))
        mine = [e for e in refreshed["endpoints"] if e["endpoint_id"] == f"auto-{tag}"]
        assert mine and mine[0]["success"] and mine[0]["loaded"] == [models[0]]
        endpoint = ok(await api(demo, "GET", f"/endpoints/auto-{tag}"))
        assert endpoint["models"] == [] and endpoint["serving_models"] == sorted(models)
        assert ok(await api(demo, "GET", f"/models/{models[1]}"))["kind"] == "embedding"
        status = ok(await api(demo, "GET", "/registry/status"))
        assert status["counts"]["endpoints"] >= 3 and status["last_refresh"]
        health = next(e for e in status["endpoints"] if e["endpoint_id"] == f"auto-{tag}")
        assert health["healthy"] is True and health["circuit"] == "closed" and health["probe"]["version"]
        assert ((await api(demo, "GET", "/providers/registry-status"))).json()["counts"] == status["counts"]
        ok(await api(demo, "DELETE", f"/endpoints/auto-{tag}"))


async def test_a_refresh_larger_than_one_nats_message_answers_every_endpoint(demo: DemoStack, tag: str) -> None:
    """Ten endpoints listing a thousand long names each: the round's probes were one NATS reply, larger than the
    server takes (about 1.2 MB against 1 MB), and every refresh was a 500."""
    models = tuple(f"wide-{tag}-{i:04d}-" + "w" * 40 for i in range(1000))
    ids = [f"wide-{tag}-{n}" for n in range(10)]
    ok(await api(demo, "POST", "/providers", {"provider_id": f"w-{tag}", "kind": "openai-compatible"}))
    async with Simulator(SimConfig(models=models)) as sim:
        for endpoint_id in ids:
            ok(await api(demo, "POST", "/endpoints", {"endpoint_id": endpoint_id, "provider_id": f"w-{tag}",
                                                    "base_url": sim.url}))
        refreshed = ok(await api(demo, "POST", "/registry/refresh"))
        mine = {e["endpoint_id"]: e for e in refreshed["endpoints"] if e["endpoint_id"] in ids}
        assert sorted(mine) == sorted(ids)
        assert all(e["success"] and set(e["models"]) == set(models) == set(e["loaded"]) for e in mine.values())
        assert len(json.dumps(list(mine.values()))) > 1024 * 1024, "the round really is larger than one message"
        assert refreshed["probed"] == len(refreshed["endpoints"]) and refreshed["healthy"] >= len(ids)
        for endpoint_id in ids:
            ok(await api(demo, "DELETE", f"/endpoints/{endpoint_id}"))
    ok(await api(demo, "DELETE", f"/providers/w-{tag}"))


async def test_import_is_validated_whole_applied_once_and_exported_back(demo: DemoStack, tag: str) -> None:
    doc = {
        "providers": [{"id": f"imp-{tag}", "kind": "openai-compatible"}],
        "endpoints": [{"id": f"imp-e-{tag}", "provider": f"imp-{tag}", "base_url": "http://127.0.0.1:9",
                       "api_key": "${IMPORTED_KEY}", "models": [f"imp-m-{tag}"]}],
        "models": [{"id": f"imp-m-{tag}", "context_length": 4096}],
        "tenants": [{"id": f"imp-t-{tag}", "all_models": False, "models": [{"model": f"imp-m-{tag}", "default": True}]}],
    }
    first = ok(await api(demo, "POST", "/registry/import", content=yaml.safe_dump(doc), content_type="application/yaml"))
    assert first["changed"] is True and first["events"] == 5
    assert ok(await api(demo, "POST", "/registry/import", doc))["changed"] is False
    exported = ok(await api(demo, "GET", "/registry/export"))
    assert next(e for e in exported["endpoints"] if e["id"] == f"imp-e-{tag}") == doc["endpoints"][0]
    assert next(t for t in exported["tenants"] if t["id"] == f"imp-t-{tag}") == doc["tenants"][0]
    as_yaml = yaml.safe_load(((await api(demo, "GET", "/registry/export", params={"format": "yaml"}))).text)
    assert as_yaml == exported

    bad = {"endpoints": [{"id": f"x-{tag}", "provider": "nowhere", "base_url": "ftp://h"}],
           "models": [{"id": "m\u0007"}]}
    refused = await api(demo, "POST", "/registry/import", bad)
    assert refused.status_code == 400
    assert {p["path"] for p in refused.json()["error"]["problems"]} == \
        {"endpoints[0].provider", "endpoints[0].base_url", "models[0].id"}
    assert (await api(demo, "GET", f"/endpoints/x-{tag}")).status_code == 404, "nothing of a refused import is applied"
    ok(await api(demo, "DELETE", f"/endpoints/imp-e-{tag}"))


async def test_admin_health_routes_need_the_admin_role(demo: DemoStack) -> None:
    for method, path in (("GET", "/registry/status"), ("GET", "/circuits"), ("POST", "/registry/refresh")):
        response = httpx.request(method, f"{demo.url}/api/admin{path}", headers={"X-API-Key": demo.demo_key})
        assert response.status_code == 403, path


async def test_a_model_whose_id_is_a_path_is_managed_through_its_percent_encoded_url(demo: DemoStack,
                                                                                    tag: str) -> None:
    from urllib.parse import quote

    model_id = f"/srv/models/{tag}/tiny q8.gguf"
    url = f"/models/{quote(model_id, safe='')}"
    created = ok(await api(demo, "POST", "/models", {"model_id": model_id, "input_price_per_1m": 1.0}))
    assert created["resource"]["model_id"] == model_id
    assert ok(await api(demo, "GET", url))["model_id"] == model_id
    updated = ok(await api(demo, "PUT", url, {"aliases": [f"tiny-{tag}"], "cached_input_price_per_1m": 0.1}))
    assert updated["resource"]["aliases"] == [f"tiny-{tag}"] and updated["resource"]["input_price_per_1m"] == 1.0
    assert updated["resource"]["cached_input_price_per_1m"] == 0.1
    exported = yaml.safe_load((await api(demo, "GET", "/registry/export", params={"format": "yaml"})).text)
    assert any(m["id"] == model_id and m["cached_input_price_per_1m"] == 0.1 for m in exported["models"])
    assert ok(await api(demo, "DELETE", url))["changed"] is True
    assert (await api(demo, "GET", url)).status_code == 404


async def test_concurrent_updates_of_one_resource_each_keep_their_fields(demo: DemoStack, tag: str,
                                                                         provider: str) -> None:
    """Each PUT merges its fields over the resource as read and sends the whole: two at once lost one's field in
    25 of 30 rounds. An update is now recorded only over the version it read (else read and merged again), and a
    client naming a stale version itself gets 409 CHANGED."""
    import asyncio

    endpoint = f"e-{tag}"
    ok(await api(demo, "POST", "/endpoints", {"endpoint_id": endpoint, "provider_id": provider,
                                              "base_url": "http://127.0.0.1:9/v1"}))
    for round_ in range(1, 11):
        first, second = await asyncio.gather(api(demo, "PUT", f"/endpoints/{endpoint}", {"priority": round_}),
                                             api(demo, "PUT", f"/endpoints/{endpoint}", {"weight": 100 + round_}))
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        now = ok(await api(demo, "GET", f"/endpoints/{endpoint}"))
        assert (now["priority"], now["weight"]) == (round_, 100 + round_), f"round {round_}: {now}"
    stale = now["version"]
    ok(await api(demo, "PUT", f"/endpoints/{endpoint}", {"priority": 50, "if_match": stale}))
    refused = await api(demo, "PUT", f"/endpoints/{endpoint}", {"weight": 7, "if_match": stale})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "CHANGED", refused.text
    assert ok(await api(demo, "GET", f"/endpoints/{endpoint}"))["weight"] == 110



async def test_a_resource_read_edited_and_put_back_whole_is_updated(demo: DemoStack, tag: str, provider: str) -> None:
    """What a GET shows beside the fields (updated_at, version, ...) is not an unknown field in a PUT."""
    shown = ok(await api(demo, "GET", f"/providers/{provider}"))
    assert shown["version"]
    changed = ok(await api(demo, "PUT", f"/providers/{provider}", {**shown, "display_name": "Edited"}))
    assert changed["changed"] is True and ok(await api(demo, "GET", f"/providers/{provider}"))["display_name"] == "Edited"


async def test_a_model_id_with_slashes_is_unassigned_and_limited_per_tenant(demo: DemoStack, tag: str) -> None:
    """`org/model:q4` could be assigned but not changed, limited or unassigned: the routes' `{model_id:str}` stops
    at a slash, and the server decodes `%2F` before routing."""
    model, tenant = f"org-{tag}/model:q4", f"t-{tag}"
    ok(await api(demo, "POST", "/models", {"model_id": model}))
    ok(await api(demo, "POST", "/tenants", {"tenant_id": tenant, "all_models": False}))
    try:
        ok(await api(demo, "POST", f"/tenants/{tenant}/models", {"model_id": model}))
        for shown in (model, model.replace("/", "%2F")):               # as it is, or percent-encoded
            assert ok(await api(demo, "GET", f"/tenants/{tenant}/models/{shown}"))["model_id"] == model
        ok(await api(demo, "PUT", f"/tenants/{tenant}/models/{model}", {"priority": 7}))
        limited = ok(await api(demo, "PUT", f"/tenants/{tenant}/models/{model.replace('/', '%2F')}/limits",
                               {"daily_tokens": 500}))
        assert limited["model_id"] == model and limited["limits"]["daily_tokens"] == 500
        assert ok(await api(demo, "GET", f"/tenants/{tenant}/models/{model}"))["priority"] == 7
        ok(await api(demo, "DELETE", f"/tenants/{tenant}/models/{model.replace('/', '%2F')}"))
        assert model not in {a["model_id"] for a in ok(await api(demo, "GET", f"/tenants/{tenant}/models"))}
    finally:
        await api(demo, "DELETE", f"/tenants/{tenant}")
        await api(demo, "DELETE", f"/models/{model}")


async def test_admin_answers_are_never_cached_nor_sniffed(demo: DemoStack, tag: str) -> None:
    """A new key is shown once, in its answer: a cache (a proxy's, the browser's) must not keep it."""
    ok(await api(demo, "POST", "/tenants", {"tenant_id": f"t-{tag}"}))
    try:
        issued = await api(demo, "POST", f"/tenants/t-{tag}/keys", {"name": "once"})
        assert issued.status_code == 201 and issued.json()["key"]
        for answer in (issued, await api(demo, "GET", "/tenants"), await api(demo, "GET", "/nope-route")):
            assert answer.headers["cache-control"] == "no-store", answer.headers
            assert answer.headers["x-content-type-options"] == "nosniff"
    finally:
        await api(demo, "DELETE", f"/tenants/t-{tag}")


async def test_a_fallback_cycle_is_refused_and_an_import_may_name_models_defined_later(demo: DemoStack,
                                                                                        tag: str) -> None:
    """loop-b falling back to loop-a, a PUT making loop-a fall back to loop-b answered 200; its export then failed
    to import (404 "Fallback model 'loop-a' not found")."""
    a, b = f"loop-a-{tag}", f"loop-b-{tag}"
    try:
        ok(await api(demo, "POST", "/models", {"model_id": a}))
        ok(await api(demo, "POST", "/models", {"model_id": b, "fallback_model": a}))
        refused = await api(demo, "PUT", f"/models/{a}", {"fallback_model": b})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["field"]) == ("VALIDATION_ERROR", "fallback_model")
        assert f"'{a}' -> '{b}' -> '{a}'" in error["message"]
        assert ok(await api(demo, "GET", f"/models/{a}"))["fallback_model"] == ""

        later = {"models": [{"id": f"{b}-2", "fallback": f"{a}-2"}, {"id": f"{a}-2"}]}
        imported = ok(await api(demo, "POST", "/registry/import", later))
        assert imported["changed"] is True and imported["events"] == 2
        assert ok(await api(demo, "GET", f"/models/{b}-2"))["fallback_model"] == f"{a}-2"
        cycle = {"models": [{"id": f"{a}-2", "fallback": f"{b}-2"}]}
        refused = await api(demo, "POST", "/registry/import", cycle)
        assert refused.status_code == 400, refused.text
        assert [p["path"] for p in refused.json()["error"]["problems"]] == ["models[0].fallback"]
        assert ok(await api(demo, "GET", f"/models/{a}-2"))["fallback_model"] == ""
    finally:
        for model in (f"{b}-2", f"{a}-2", b, a):
            await api(demo, "DELETE", f"/models/{model}")


@pytest.mark.parametrize(("resource", "field"), [("tenants", "tenant_id"), ("providers", "provider_id"),
                                                 ("models", "model_id"), ("endpoints", "endpoint_id")])
async def test_a_put_naming_another_id_than_its_url_is_refused(demo: DemoStack, tag: str, provider: str,
                                                               resource: str, field: str) -> None:
    """`PUT /tenants/t1 {"tenant_id": "t2"}` answered 200, changing t1 and ignoring the body's id; so did every
    resource's PUT (tests/e2e/test_admin_bodies.py has the tenant's and the keys')."""
    ident = {"tenants": f"t-{tag}", "providers": provider, "models": f"m-{tag}", "endpoints": f"e-{tag}"}[resource]
    created = {"tenants": {"tenant_id": ident}, "models": {"model_id": ident},
               "endpoints": {"endpoint_id": ident, "provider_id": provider, "base_url": "http://127.0.0.1:9"}}
    if resource in created:
        ok(await api(demo, "POST", f"/{resource}", created[resource]))
    try:
        ok(await api(demo, "PUT", f"/{resource}/{ident}", {field: ident}))          # the same id: fine
        other = await api(demo, "PUT", f"/{resource}/{ident}", {field: f"{ident}-other"})
        assert other.status_code == 400, other.text
        assert other.json()["error"]["field"] == field
    finally:
        if resource in ("tenants", "models"):
            await api(demo, "DELETE", f"/{resource}/{ident}")
