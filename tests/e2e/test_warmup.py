"""End to end: warm-ups on `switchyard up --demo` — the admin API, the model test, `warm_on_start` — each an
unbilled call recorded as `model.warmed.v1` in the log, never as usage."""

from __future__ import annotations

import httpx

from switchyard_gateway.contracts.subjects import USAGE_RECORDED
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, logged, wait_for
from tests.e2e.test_admin_registry import api, ok, tag  # noqa: F401 — `tag`: the fixture, shared


async def warmed(demo: DemoStack, endpoint_id: str) -> list[dict]:
    return await logged(demo.database_url, "model.warmed.v1", "payload->>'endpoint_id' = $2", endpoint_id)


async def usage_of(demo: DemoStack, endpoint_id: str) -> int:
    return len(await logged(demo.database_url, USAGE_RECORDED, "payload->>'endpoint_id' = $2", endpoint_id))


async def test_warming_a_model_calls_each_endpoint_once_unbilled_and_records_it(demo: DemoStack, tag: str) -> None:
    ok(await api(demo, "POST", "/providers", {"provider_id": f"ol-{tag}", "kind": "ollama"}))
    ok(await api(demo, "POST", "/providers", {"provider_id": f"oa-{tag}", "kind": "openai-compatible"}))
    chat, embed = f"chat-{tag}", f"embed-{tag}"
    ok(await api(demo, "POST", "/models", {"model_id": embed, "kind": "embedding"}))
    ok(await api(demo, "POST", "/models", {"model_id": chat}))
    async with Simulator(SimConfig(models=(chat, embed))) as ollama, Simulator(SimConfig(models=(chat,))) as vllm:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"ol-{tag}", "provider_id": f"ol-{tag}",
                                                  "base_url": ollama.url, "models": [chat, embed]}))
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"oa-{tag}", "provider_id": f"oa-{tag}",
                                                  "base_url": vllm.url + "/v1", "models": [chat]}))
        both = ok(await api(demo, "POST", "/models/warmup", {"model": chat}))
        assert both["success"] is True and both["warmed"] == 2 and both["duration_ms"] > 0
        assert {e["endpoint_id"] for e in both["endpoints"]} == {f"ol-{tag}", f"oa-{tag}"}
        assert ollama.stats.requests.get("/api/generate") == 1 and vllm.stats.requests.get("/v1/chat/completions") == 1
        one = ok(await api(demo, "POST", "/models/warmup", {"model": embed, "endpoint": f"ol-{tag}"}))
        assert [e["endpoint_id"] for e in one["endpoints"]] == [f"ol-{tag}"]
        assert ollama.stats.requests.get("/api/embed") == 1, "an embedding model is loaded by an embed call"
        seed = await api(demo, "POST", "/models/warmup", {"model_id": chat, "provider": f"oa-{tag}"})
        assert [e["endpoint_id"] for e in ok(seed)["endpoints"]] == [f"oa-{tag}"]

    records = await warmed(demo, f"ol-{tag}")
    assert [(r["model_id"], r["ok"], r["trigger"]) for r in records] == [(chat, True, "admin"), (embed, True, "admin")]
    assert records[0]["duration_ms"] > 0 and records[0]["upstream_model"] == chat
    assert await usage_of(demo, f"ol-{tag}") == 0 and await usage_of(demo, f"oa-{tag}") == 0, "warm-ups are unbilled"


async def test_warm_up_refusals_name_what_is_missing(demo: DemoStack, tag: str) -> None:
    for body, status, code in (({}, 400, "VALIDATION_ERROR"), ({"model": f"nope-{tag}"}, 404, "MODEL_NOT_FOUND"),
                               ({"model": "llama3.2", "endpoint": f"nope-{tag}"}, 404, "ENDPOINT_NOT_FOUND"),
                               ({"model": "llama3.2", "endpoint": 5}, 400, "VALIDATION_ERROR")):
        refused = await api(demo, "POST", "/models/warmup", body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), (body, refused.text)
    member = httpx.post(f"{demo.url}/api/admin/models/warmup", json={"model": "llama3.2"},
                        headers={"Authorization": f"Bearer {demo.demo_key}"})
    assert member.status_code == 403
    unknown = await api(demo, "POST", "/models/llama3.2/reload")
    assert unknown.status_code == 404


async def test_a_model_test_reports_success_and_latency_or_the_connectivity_error(demo: DemoStack, tag: str) -> None:
    tested = ok(await api(demo, "POST", "/models/llama3.2/test"))
    assert tested["success"] is True and tested["latency_ms"] > 0 and tested["error"] is None
    ok(await api(demo, "POST", "/providers", {"provider_id": f"gone-{tag}", "kind": "openai-compatible"}))
    ok(await api(demo, "POST", "/models", {"model_id": f"lonely-{tag}"}))
    async with Simulator(SimConfig(models=(f"lonely-{tag}",))) as sim:
        url = sim.url
    ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"gone-{tag}", "provider_id": f"gone-{tag}",
                                              "base_url": url, "models": [f"lonely-{tag}"]}))
    dead = ok(await api(demo, "POST", f"/models/lonely-{tag}/test"))
    assert dead["success"] is False and dead["code"] == "CONNECTIVITY_ERROR" and dead["error"]
    assert (await warmed(demo, f"gone-{tag}"))[-1]["trigger"] == "test"
    assert (await api(demo, "POST", f"/models/nope-{tag}/test")).status_code == 404
    huge = "m" * 100_000                     # was echoed whole in a 404: no model can have that name
    refused = await api(demo, "POST", "/models/warmup", {"model": huge})
    assert refused.status_code == 400 and len(refused.content) < 2_000 and refused.json()["error"]["field"] == "model"


async def test_an_endpoint_marked_warm_on_start_is_warmed_when_it_first_probes_healthy(demo: DemoStack,
                                                                                      tag: str) -> None:
    ok(await api(demo, "POST", "/providers", {"provider_id": f"w-{tag}", "kind": "ollama"}))
    ok(await api(demo, "POST", "/models", {"model_id": f"m-{tag}"}))
    async with Simulator(SimConfig(models=(f"m-{tag}",))) as sim:
        created = ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"w-{tag}", "provider_id": f"w-{tag}",
                                                            "base_url": sim.url, "models": [f"m-{tag}"],
                                                            "warm_on_start": True}))
        assert created["resource"]["warm_on_start"] is True
        records = await wait_for(lambda: warmed(demo, f"w-{tag}"), timeout_s=30, what="the warm-up on start")
        assert [(r["model_id"], r["trigger"], r["ok"]) for r in records] == [(f"m-{tag}", "start", True)]
        assert sim.stats.requests.get("/api/generate") == 1
        exported = ok(await api(demo, "GET", "/registry/export"))
        assert next(e for e in exported["endpoints"] if e["id"] == f"w-{tag}")["warm_on_start"] is True
