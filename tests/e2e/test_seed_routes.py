"""End to end: the seed systems' routes, bodies and metrics on `switchyard up --demo`, as aliases of Switchyard's."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import DemoStack, wait_for
from tests.e2e.test_admin_registry import api, ok
from tests.e2e.test_quota_e2e import admin, new_tenant, start_gateway, stop_gateway
from tests.e2e.test_response_cache import metric


def gauge(demo: DemoStack, name: str) -> float:
    """An unlabelled metric's value."""
    found = re.search(rf"^{name} (\S+)$", httpx.get(f"{demo.url}/metrics").text, re.M)
    assert found, name
    return float(found.group(1))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def get(demo: DemoStack, path: str, key: str | None = None, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(f"{demo.url}{path}", params=params, headers=bearer(key) if key else {})


async def send(demo: DemoStack, method: str, path: str, key: str, body: object = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.request(method, f"{demo.url}{path}", json=body, headers=bearer(key))


# --- the embedding-model platform (catalog, tenant models, MODEL_NOT_CONFIGURED) -------------------------------


async def test_the_embedding_catalog_lists_the_tenants_embedding_models_and_their_availability(demo: DemoStack) -> None:
    models = (await get(demo, "/api/v1/embedding-models/catalog", demo.demo_key)).json()["models"]
    nomic = next(x for x in models if x["model_id"] == "nomic-embed-text")
    assert nomic["is_available"] is True and nomic["provider"] in ("ollama-local", "openai-sim")
    assert set(nomic["providers"]) == {"ollama-local", "openai-sim"}
    assert all(x["model_type"] == "embedding" for x in models) and "llama3.2" not in {x["model_id"] for x in models}
    assert (await get(demo, "/api/v1/embedding-models/catalog")).status_code == 401


async def test_tenant_models_are_enabled_and_given_quotas_through_the_platforms_routes(demo: DemoStack) -> None:
    tenant, key = new_tenant(demo, all_models=False)
    created = await send(demo, "POST", "/api/v1/tenant-models", demo.admin_key,
                         {"model_id": "nomic-embed-text", "tenant_id": tenant, "enabled": True,
                          "monthly_quota": 1_000_000})
    assert created.status_code == 201, created.text
    assert created.json() == {"tenant_id": tenant, "model_id": "nomic-embed-text", "enabled": True,
                              "is_default": False, "priority": 0, "monthly_quota": 1_000_000, "daily_quota": None}
    changed = await send(demo, "PUT", "/api/v1/tenant-models/nomic-embed-text", demo.admin_key,
                         {"tenant_id": tenant, "daily_quota": 200_000, "priority": 10, "is_default": True})
    assert changed.status_code == 200 and changed.json()["daily_quota"] == 200_000
    assert (changed.json()["monthly_quota"], changed.json()["priority"], changed.json()["is_default"]) == \
        (1_000_000, 10, True)
    quotas = (await get(demo, "/api/v1/tenant-models/quotas", key)).json()
    assert {(q["quota_type"], q["limit"]) for q in quotas["quotas"] if q["model_id"] == "nomic-embed-text"} >= \
        {("daily", 200_000), ("monthly", 1_000_000)}

    refused = await send(demo, "PUT", "/api/v1/tenant-models/llama3.2", demo.admin_key, {"tenant_id": tenant})
    assert refused.status_code == 404
    assert refused.json() == {"error": "Model not found", "code": "MODEL_NOT_CONFIGURED",
                              "details": f"Model llama3.2 is not configured for tenant {tenant}"}
    assert (await send(demo, "POST", "/api/v1/tenant-models", key, {"model_id": "nomic-embed-text"})).status_code \
        == 403
    assert (await send(demo, "POST", "/api/v1/tenant-models", demo.admin_key,
                       {"model_id": "nope", "tenant_id": tenant})).status_code == 404
    # a model the registry does not know is not configured either, in the same body (it was another shape)
    unknown_model = await send(demo, "PUT", "/api/v1/tenant-models/abc-123", demo.admin_key, {"tenant_id": tenant})
    assert unknown_model.status_code == 404 and unknown_model.json()["code"] == "MODEL_NOT_CONFIGURED"
    for hostile in ("\x00", "T" * 300, "../demo"):     # a NUL was a 404 "tenant not found", where others say 400
        named = await send(demo, "PUT", "/api/v1/tenant-models/nomic-embed-text", demo.admin_key, {"tenant_id": hostile})
        assert named.status_code == 400 and named.json()["error"]["code"] == "INVALID_IDENTIFIER", named.text
    typo = await send(demo, "PUT", "/api/v1/tenant-models/nomic-embed-text", demo.admin_key,
                      {"tenant_id": tenant, "monthly_qouta": 5})          # was 200, the typo dropped
    assert typo.status_code == 400 and "monthly_qouta" in typo.text

    async with httpx.AsyncClient(timeout=30) as client:
        call = await client.post(f"{demo.url}/v1/embeddings", headers=bearer(key),
                                 json={"model": "llama3.2", "input": "not mine"})
        assert call.status_code == 404 and call.json()["error"]["code"] == "MODEL_NOT_CONFIGURED"
        assert call.json()["error"]["message"] == f"Model 'llama3.2' is not configured for tenant '{tenant}'"
        ollama = await client.post(f"{demo.url}/api/embed", headers=bearer(key),
                                   json={"model": "llama3.2", "input": "not mine"})
        assert ollama.status_code == 404 and "not configured" in ollama.json()["error"]
        assert ollama.json()["code"] == "MODEL_NOT_CONFIGURED"            # on every door, in its shape
        anthropic = await client.post(f"{demo.url}/v1/messages", headers={**bearer(key), "anthropic-version": "x"},
                                      json={"model": "llama3.2", "max_tokens": 5,
                                            "messages": [{"role": "user", "content": "not mine"}]})
        assert anthropic.status_code == 404 and anthropic.json()["error"]["code"] == "MODEL_NOT_CONFIGURED"
        assert anthropic.json()["error"]["type"] == "not_found_error"
        default = await client.post(f"{demo.url}/v1/embeddings", headers=bearer(key),
                                    json={"model": "default", "input": "mine"})
        assert default.status_code == 200, "the default model is the one just made default"
        unknown = await client.post(f"{demo.url}/v1/embeddings", headers=bearer(key),
                                    json={"model": "no-such-model", "input": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


# --- the embeddings service (health, metrics, breakers, warm-up) -----------------------------------------------


async def test_the_embeddings_services_operations_routes(demo: DemoStack) -> None:
    health = await get(demo, "/api/v1/embeddings/health")
    assert health.json()["service"] == "embeddings" and "models" not in health.json()
    assert health.status_code == (503 if health.json()["status"] == "unhealthy" else 200)
    detail = (await get(demo, "/api/v1/embeddings/health", demo.admin_key)).json()
    assert detail["models"]["nomic-embed-text"] == {"available": True} and detail["active_requests"] >= 0

    assert (await get(demo, "/api/v1/embeddings/metrics", demo.demo_key)).status_code == 403
    figures = (await get(demo, "/api/v1/embeddings/metrics", demo.admin_key)).json()
    # Prometheus's type says its charset once (the framework added a second)
    scraped = await get(demo, "/api/v1/metrics/text")
    assert scraped.headers["content-type"].count("charset") == 1, scraped.headers["content-type"]
    assert figures["models"]["nomic-embed-text"]["available"] is True
    assert {"requests_total", "errors_total", "input_tokens", "cost_usd"} <= set(figures["models"]["nomic-embed-text"])

    breakers = (await get(demo, "/api/v1/embeddings/circuit-breakers", demo.admin_key)).json()["circuit_breakers"]
    assert breakers["ollama-1"]["provider"] == "ollama-local" and breakers["ollama-1"]["state"] in ("closed", "open",
                                                                                                   "half_open")
    reset = (await send(demo, "POST", "/api/v1/embeddings/circuit-breakers/openai-sim/reset", demo.admin_key)).json()
    assert [r["endpoint_id"] for r in reset["reset"]] == ["vllm-1"] and reset["reset"][0]["state"] == "closed"
    one = (await send(demo, "POST", "/api/v1/embeddings/circuit-breakers/ollama-1/reset", demo.admin_key)).json()
    assert [r["endpoint_id"] for r in one["reset"]] == ["ollama-1"]
    assert (await send(demo, "POST", "/api/v1/embeddings/circuit-breakers/nope/reset", demo.admin_key)).status_code \
        == 404

    warmed = await send(demo, "POST", "/api/v1/embeddings/models/warmup", demo.admin_key,
                        {"provider": "openai-sim", "model_id": "nomic-embed-text"})
    assert warmed.status_code == 200 and [e["endpoint_id"] for e in warmed.json()["endpoints"]] == ["vllm-1"]
    assert (await send(demo, "POST", "/api/v1/embeddings/models/warmup", demo.admin_key,
                       {"provider": "huggingface", "model_id": "nomic-embed-text"})).status_code == 404
    discovered = await send(demo, "POST", "/api/v1/admin/discover-models", demo.admin_key)
    assert discovered.status_code == 200 and discovered.json()["probed"] >= 2
    assert (await send(demo, "POST", "/api/v1/admin/discover-models", demo.demo_key)).status_code == 403


# --- the provider-admin API (system routes, error bodies) and NOMYO's Prometheus usage --------------------------


async def test_system_health_and_status_answer_for_every_dependency(demo: DemoStack) -> None:
    health = await get(demo, "/api/system/health", demo.admin_key)
    assert set(health.json()) == set((await get(demo, "/health", demo.admin_key)).json())
    assert (await get(demo, "/api/system/status", demo.demo_key)).status_code == 403
    status = (await get(demo, "/api/system/status", demo.admin_key)).json()
    assert status["database"]["status"] == "ok" and status["database"]["latency_ms"] > 0
    assert status["valkey"]["status"] == "ok" and status["nats"]["status"] == "ok"
    assert set(status["services"]) >= {"registry", "metering", "router", "quota"}
    assert status["registry"]["counts"]["tenants"] >= 2 and "users" in status["registry"]["counts"]


async def test_admin_errors_carry_validation_errors_beside_problems_and_422_for_refused_values(demo: DemoStack) -> None:
    bad_id = await api(demo, "POST", "/providers", {"provider_id": "Not An Id!", "kind": "ollama"})
    assert bad_id.json()["error"]["validationErrors"] == [{"field": "provider_id",
                                                           "message": bad_id.json()["error"]["message"]}]
    doc = {"endpoints": [{"id": "x-x", "provider": "nowhere", "base_url": "ftp://h"}]}
    refused = (await api(demo, "POST", "/registry/import", doc)).json()["error"]
    assert refused["validationErrors"] == [{"field": p["path"], "message": p["message"]} for p in refused["problems"]]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    expired = await api(demo, "POST", "/tenants/demo/keys", {"expires_at": past})
    assert expired.status_code == 422 and expired.json()["error"]["field"] == "expires_at"
    typed = await api(demo, "POST", "/models", {"model_id": "m", "context_length": "long"})
    assert typed.status_code == 400 and typed.json()["error"]["validationErrors"][0]["field"] == "context_length"
    malformed = await api(demo, "POST", "/providers", content="{not json", content_type="application/json")
    assert malformed.status_code == 400 and "validationErrors" not in malformed.json()["error"]
    assert malformed.json()["error"]["message"].startswith("Malformed JSON in request body")


async def test_the_provider_platforms_bodies_are_read_and_a_key_in_them_refused_saying_where_keys_go(
        demo: DemoStack) -> None:
    """Its guide's provider body (`identifier`, `name`) was refused as unknown fields; a key given inline
    (`authConfig`, a template's `customizations.apiKey`) is refused naming `api_key_ref`."""
    ident = f"seed-{uuid.uuid4().hex[:6]}"
    made = await api(demo, "POST", "/providers", {"identifier": ident, "name": "My Provider", "kind": "ollama"})
    assert made.status_code == 201, made.text
    shown = (await api(demo, "GET", f"/providers/{ident}")).json()
    assert (shown["provider_id"], shown["display_name"]) == (ident, "My Provider")
    renamed = await api(demo, "PUT", f"/providers/{ident}", {"name": "Renamed"})
    assert renamed.status_code == 200 and (await api(demo, "GET", f"/providers/{ident}")).json()["display_name"] \
        == "Renamed"
    for body, field in (({"identifier": "x-y", "kind": "ollama", "authConfig": {"type": "api_key"}}, "authConfig"),
                        ({"identifier": "x-y", "provider_id": "x-z", "kind": "ollama"}, "identifier")):
        refused = await api(demo, "POST", "/providers", body)
        assert refused.status_code == 400 and refused.json()["error"]["field"] == field, refused.text
    keyed = await api(demo, "POST", "/provider-templates/vllm/apply",
                      {"identifier": "x-y", "customizations": {"apiKey": "sk-secret", "endpoint": "http://h:1"}})
    assert keyed.status_code == 400 and "api_key_ref" in keyed.json()["error"]["message"]
    assert "sk-secret" not in keyed.text
    await api(demo, "DELETE", f"/providers/{ident}")


async def test_a_body_missing_a_required_field_names_it_in_validation_errors(demo: DemoStack) -> None:
    """Whoever reads the body (the registry over NATS, or the gateway's own typed routes), a field left out is
    named like a field given wrong."""
    for path, body, missing in (("/tenants", {"display_name": "no id"}, "tenant_id"),
                                ("/providers", {"kind": "ollama"}, "provider_id"),
                                ("/endpoints", {"endpoint_id": "ep-no-url", "provider_id": "ollama-local"}, "base_url"),
                                ("/users", {"username": "no-password", "tenant_id": "demo"}, "password"),
                                ("/tenants/demo/limits", {"timezone": 5}, "timezone")):
        refused = await api(demo, "PUT" if path.endswith("/limits") else "POST", path, body)
        assert refused.status_code == 400, (path, refused.text)
        error = refused.json()["error"]
        assert (error["code"], error.get("field")) == ("VALIDATION_ERROR", missing), (path, error)
        assert error["validationErrors"] == [{"field": missing, "message": error["message"]}], (path, error)


async def test_usage_in_the_prometheus_format_and_metrics_under_their_seed_paths(demo: DemoStack) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{demo.url}/v1/embeddings", headers=bearer(demo.demo_key),
                          json={"model": "nomic-embed-text", "input": "counted"})
    text = await wait_for(lambda: _usage_text(demo), timeout_s=15, what="token usage in the projection")
    assert "# TYPE usage_counts gauge" in text and "# TYPE token_usage_counts gauge" in text
    assert re.search(r'^usage_counts\{endpoint="ollama-1",model="nomic-embed-text"\} \d', text, re.M)
    assert (await get(demo, "/api/usage", None, format="prometheus")).status_code == 401
    metrics = (await get(demo, "/api/v1/metrics/text")).text
    assert "embedding_requests_total" in metrics and "switchyard_requests_total" in metrics


async def _usage_text(demo: DemoStack) -> str | None:
    response = await get(demo, "/api/usage", demo.admin_key, format="prometheus")
    assert response.headers["content-type"].startswith("text/plain")
    return response.text if re.search(r'^token_usage_counts\{endpoint="[^"]+",model="nomic-embed-text"\} [1-9]',
                                      response.text, re.M) else None


def test_the_embeddings_services_auth_mode_spelling_starts_a_single_user_gateway(demo: DemoStack, urls) -> None:
    gateway = start_gateway(demo, urls, auth_mode="single_user", api_key="single-user-key-0123456789")
    try:
        r = httpx.get(f"{gateway.url}/api/admin/tenants", headers={"X-API-KEY": "single-user-key-0123456789"})
        assert r.status_code == 200
        assert httpx.post(f"{gateway.url}/api/auth/login", json={"username": "a", "password": "b" * 8}).status_code \
            == 404, "no users in single-user mode"
    finally:
        stop_gateway(gateway)


# --- the seed metrics ---------------------------------------------------------------------------------------------


async def test_seed_metrics_count_outcomes_latency_availability_and_active_requests(demo: DemoStack) -> None:
    tag = uuid.uuid4().hex[:8]
    labels = {"model": "nomic-embed-text"}
    ok_before = metric(demo, "embedding_requests_total", **labels, status="success", code="200")
    latency_before = metric(demo, "embedding_latency_seconds_count", **labels)
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{demo.url}/v1/embeddings", headers=bearer(demo.demo_key),
                              json={"model": "nomic-embed-text", "input": "measured"})
        assert r.status_code == 200
        bad_before = metric(demo, "embedding_requests_total", model="unknown", status="error", code="404")
        made_up = [f"ghost-{uuid.uuid4().hex}" + "D" * 10_000 for _ in range(3)]
        for name in made_up:        # refused: a name no model has is no label (each would be a series for good)
            await client.post(f"{demo.url}/v1/embeddings", headers=bearer(demo.demo_key), json={"model": name,
                                                                                                "input": "x"})
        scraped = (await client.get(f"{demo.url}/metrics")).text
        assert not any(name[:38] in scraped for name in made_up)
    assert metric(demo, "embedding_requests_total", **labels, status="success", code="200") == ok_before + 1
    assert metric(demo, "embedding_latency_seconds_count", **labels) == latency_before + 1
    assert metric(demo, "embedding_requests_total", model="unknown", status="error", code="404") == bad_before + 3
    assert metric(demo, "embedding_model_availability", model="nomic-embed-text") == 1

    ok(await api(demo, "POST", "/providers", {"provider_id": f"slow-{tag}", "kind": "openai-compatible"}))
    ok(await api(demo, "POST", "/models", {"model_id": f"slow-embed-{tag}", "kind": "embedding"}))
    async with Simulator(SimConfig(models=(f"slow-embed-{tag}",), latency_ms=1500)) as sim:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"slow-{tag}", "provider_id": f"slow-{tag}",
                                                  "base_url": sim.url, "models": [f"slow-embed-{tag}"]}))
        idle = gauge(demo, "active_embedding_requests")
        async with httpx.AsyncClient(timeout=30) as client:
            call = asyncio.ensure_future(client.post(f"{demo.url}/v1/embeddings", headers=bearer(demo.demo_key),
                                                     json={"model": f"slow-embed-{tag}", "input": "slow"}))
            await wait_for(lambda: gauge(demo, "active_embedding_requests") >= idle + 1, timeout_s=10,
                           what="the slow call to count as active")
            assert (await call).status_code == 200
        await wait_for(lambda: gauge(demo, "active_embedding_requests") == idle, timeout_s=10, what="back to idle")
    # its only endpoint is gone: once the router's probe says so, the model is unavailable
    await api(demo, "POST", "/registry/refresh")
    await wait_for(lambda: metric(demo, "embedding_model_availability", model=f"slow-embed-{tag}") == 0
                   and f'model="slow-embed-{tag}"' in httpx.get(f"{demo.url}/metrics").text,
                   timeout_s=15, what="the model to be unavailable")
    await api(demo, "DELETE", f"/endpoints/slow-{tag}")
    assert metric(demo, "embedding_model_availability", model=f"slow-embed-{tag}") == 0, "no endpoint serves it"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_a_tenant_model_with_a_bad_quota_changes_nothing_and_the_caller_is_checked_first(
        demo: DemoStack) -> None:
    """The assignment was recorded before its quota was refused (a 400 that half happened), naming a field the
    caller never sent; and a bad body without a key got its 400 before its 401."""
    tenant, key = new_tenant(demo, all_models=False)
    refused = await send(demo, "POST", "/api/v1/tenant-models", demo.admin_key,
                         {"model_id": "nomic-embed-text", "tenant_id": tenant, "monthly_quota": -5})
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "monthly_quota", refused.text
    assigned = await send(demo, "GET", f"/api/admin/tenants/{tenant}/models", demo.admin_key)
    assert "nomic-embed-text" not in {a["model_id"] for a in assigned.json()}, "nothing recorded"
    assert (await send(demo, "POST", "/api/v1/tenant-models", None, {})).status_code == 401
    assert (await send(demo, "POST", "/api/v1/tenant-models", key, {"model_id": 5})).status_code == 403
    assert (await send(demo, "POST", "/api/v1/tenant-models", demo.admin_key, {})).status_code == 400


def test_log_based_monitoring_a_line_per_call_and_each_failing_endpoint_said(demo: DemoStack, urls) -> None:
    """The gateway's log recipes of the proxy people come from grep a line per call and the upstream failures: at
    info level there was neither (a refused endpoint's 502 logged nothing). `SWITCHYARD_ACCESS_LOG` writes
    `call.done` per call; an endpoint's failed attempt is an `upstream.attempt_failed` warning, at most one per
    endpoint and kind of failure every 10 s."""
    gateway = start_gateway(demo, urls, access_log="true")
    model, endpoint = f"ghost-{uuid.uuid4().hex[:6]}", f"deadend-{uuid.uuid4().hex[:6]}"
    try:
        ok(httpx.post(f"{demo.url}/api/admin/models", json={"model_id": model}, headers=bearer(demo.admin_key)))
        ok(httpx.post(f"{demo.url}/api/admin/endpoints", headers=bearer(demo.admin_key), json={
            "endpoint_id": endpoint, "provider_id": "ollama-local", "models": [model],
            "base_url": f"http://127.0.0.1:{pick_free_port(set())}"}))
        request_id = f"logged-{uuid.uuid4().hex}"
        served = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": "nomic-embed-text", "input": "hi"},
                            headers={**bearer(demo.admin_key), "X-Request-ID": request_id}, timeout=30)
        assert served.status_code == 200

        def failed() -> int | None:
            answer = httpx.post(f"{gateway.url}/v1/embeddings", json={"model": model, "input": "hi"},
                                headers=bearer(demo.admin_key), timeout=30)
            return answer.status_code if answer.status_code != 404 else None     # until it knows the model
        assert asyncio.run(wait_for(failed, timeout_s=15, what=f"{model} routed")) in (502, 503)
        log = asyncio.run(wait_for(lambda: _log_with(gateway, "upstream.attempt_failed"), timeout_s=10,
                                   what="the failed attempt in the log"))
        done = [line for line in log.splitlines() if '"call.done"' in line and request_id in line]
        assert len(done) == 1 and '"latency_ms"' in done[0] and '"status": 200' in done[0], done
        assert endpoint in next(line for line in log.splitlines() if "upstream.attempt_failed" in line)
    finally:
        httpx.delete(f"{demo.url}/api/admin/endpoints/{endpoint}", headers=bearer(demo.admin_key))
        stop_gateway(gateway)


def _log_with(gateway, event: str) -> str | None:
    text = gateway.log_path.read_text()
    return text if event in text else None
