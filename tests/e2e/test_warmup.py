"""End to end: warm-ups on `switchyard up --demo` — the admin API, the model test, `warm_on_start` — each an
unbilled call recorded as `model.warmed.v1` in the log, never as usage."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.messages import WarmModel
from switchyard_gateway.contracts.subjects import USAGE_RECORDED
from switchyard_gateway.kit import natsio
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import DemoStack, logged, wait_for
from tests.e2e.test_admin_registry import api, ok, tag  # noqa: F401 — `tag`: the fixture, shared
from tests.raw_upstream import RawUpstream


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


class Hanging(RawUpstream):
    """A server that answers its probes (`GET`) and never a warm-up (`POST`), counting those."""

    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    async def answer(self, head: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        if head.startswith(b"POST "):
            self.posts += 1
            await asyncio.Event().wait()                # until the caller gives up and closes the connection
        data = b'{"object": "list", "data": []}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(data), data))


async def test_a_hanging_endpoint_holds_up_only_its_own_warm_ups_and_none_is_made_too_late(demo: DemoStack, nc,
                                                                                            tag: str) -> None:
    """Warm-ups ran one at a time in the router: behind one of a hanging model, a healthy model's 2 ms warm-up took
    238 s, and a second warm-up of the hanging endpoint ran (and was recorded) after its asker had given up. Now
    another endpoint's warm-up is not held up; the same endpoint's waits its turn, and one whose turn comes too late
    for its asker is not made: it is answered 503 while its asker still waits."""
    ok(await api(demo, "POST", "/providers", {"provider_id": f"hang-{tag}", "kind": "openai-compatible"}))
    hung, other, healthy = f"hung-{tag}", f"other-{tag}", f"fine-{tag}"
    for model in (hung, other, healthy):
        ok(await api(demo, "POST", "/models", {"model_id": model}))
    async with Hanging() as upstream, Simulator(SimConfig(models=(healthy,))) as sim:
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"hang-{tag}", "provider_id": f"hang-{tag}",
                                                  "base_url": upstream.url, "models": [hung, other],
                                                  "timeout_s": 3}))
        ok(await api(demo, "POST", "/endpoints", {"endpoint_id": f"fine-{tag}", "provider_id": f"hang-{tag}",
                                                  "base_url": sim.url, "models": [healthy]}))
        hanging = asyncio.ensure_future(api(demo, "POST", "/models/warmup", {"model": hung}))
        await wait_for(lambda: upstream.posts == 1, what="the hanging warm-up's call")
        # an asker that waits 4 s for a warm-up of the same endpoint: its turn comes after 3 s, too late for a call
        late = asyncio.ensure_future(natsio.request(nc, subjects.ROUTER_WARM, encode(WarmModel(
            model_id=other, endpoint_id=f"hang-{tag}")), 4.0))
        fine = ok(await api(demo, "POST", "/models/warmup", {"model": healthy}))
        assert fine["success"] is True and not hanging.done(), "the healthy warm-up waited behind the hanging one"
        with pytest.raises(natsio.ServiceError) as refused:
            await late
        assert refused.value.status == 503 and "busy" in refused.value.body.message, refused.value.body
        timed_out = ok(await hanging)
        assert timed_out["success"] is False and "within 3 s" in timed_out["endpoints"][0]["error"]
    assert upstream.posts == 1, "the warm-up whose turn came too late was made"
    assert [r["model_id"] for r in await warmed(demo, f"hang-{tag}")] == [hung]


async def test_a_warm_up_nothing_serves_is_refused_at_once(demo: DemoStack, tag: str) -> None:
    """A warm-up of a model no endpoint serves took 2 s to be refused: the router looked for it again in case it
    had just been registered. The gateway's catalog, once it holds every registry event recorded, answers at once."""
    for body, code in (({"model": f"nope-{tag}"}, "MODEL_NOT_FOUND"),
                       ({"model": "llama3.2", "endpoint": f"nope-{tag}"}, "ENDPOINT_NOT_FOUND"),
                       ({"model": "llama3.2", "provider": f"nope-{tag}"}, "ENDPOINT_NOT_FOUND")):
        started = time.monotonic()
        refused = await api(demo, "POST", "/models/warmup", body)
        assert (refused.status_code, refused.json()["error"]["code"]) == (404, code)
        assert time.monotonic() - started < 1.5, f"{body} took {time.monotonic() - started:.2f} s (2 s before)"
