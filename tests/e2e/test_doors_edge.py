"""End to end: what the edge adds to every door — request ids, CORS, the anonymous tenant, Ollama's root answer,
`GET /v1/models/{id}` — and what Ollama tools read: measured durations and the capabilities servers report.

A second gateway beside the demo's runs with `SWITCHYARD_ANONYMOUS_TENANT` and `SWITCHYARD_CORS_ORIGINS`
set; the demo's own gateway keeps both off (the default).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import ollama
import openai
import pytest

from tests.conftest import DemoStack, wait_for
from tests.e2e.test_ollama_front_door import Upstream, registered_upstream
from tests.e2e.test_quota_e2e import Gateway, new_tenant, set_limits, settled, start_gateway, stop_gateway

ORIGIN = "http://app.example"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
async def upstream(demo: DemoStack) -> AsyncIterator[Upstream]:
    async with registered_upstream(demo, "edge") as registered:
        yield registered


@pytest.fixture(scope="module")
def open_gateway(demo: DemoStack, urls, upstream: Upstream) -> Iterator[Gateway]:
    """A gateway for a trusted network: keyless calls act for tenant `edge-all`; one browser origin allowed."""
    gateway = start_gateway(demo, urls, anonymous_tenant=f"{upstream.prefix}-all", cors_origins=ORIGIN)
    yield gateway
    stop_gateway(gateway)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- request ids ------------------------------------------------------------------------------------


async def test_every_answer_carries_a_request_id(demo: DemoStack, urls) -> None:
    tenant, key = new_tenant(demo)
    assert set_limits(demo, tenant, rpm=1).status_code == 200
    async with httpx.AsyncClient(base_url=demo.url, timeout=30) as http:
        answers = {
            "listing": await http.get("/v1/models", headers=bearer(key)),
            "ollama listing": await http.get("/api/tags", headers=bearer(key)),
            "401": await http.post("/v1/chat/completions", headers=bearer("sy_wrong"), json={}),
            "404 model": await http.get("/v1/models/no-such-model", headers=bearer(key)),
            "404 route": await http.get("/v1/no-such-route", headers=bearer(key)),
            "405": await http.delete("/v1/models", headers=bearer(key)),
            "admin": await http.get("/api/admin/tenants", headers=bearer(demo.admin_key)),
            "403": await http.get("/api/admin/tenants", headers=bearer(key)),
            "health": await http.get("/health"),
            "200": await http.post("/v1/chat/completions", headers=bearer(key), json={"model": "llama3.2",
                                                                                     "messages": HI}),
            "429": await http.post("/v1/chat/completions", headers=bearer(key), json={"model": "llama3.2",
                                                                                     "messages": HI}),
        }
        echoed = await http.get("/api/tags", headers={**bearer(key), "x-request-id": "trace-me-42"})
    await settled(demo, urls, tenant, 1)       # the answered call is counted before the next test looks
    assert {name: a.status_code for name, a in answers.items()} == {
        "listing": 200, "ollama listing": 200, "401": 401, "404 model": 404, "404 route": 404, "405": 405,
        "admin": 200, "403": 403, "health": answers["health"].status_code, "200": 200, "429": 429}
    missing = [name for name, a in answers.items() if len(a.headers.get("x-request-id", "")) < 8]
    assert not missing, missing
    assert len({a.headers["x-request-id"] for a in answers.values()}) == len(answers)     # one per request
    assert echoed.headers["x-request-id"] == "trace-me-42"


# --- errors per door ------------------------------------------------------------------------------


def test_errors_take_the_shape_of_the_door_they_come_through(demo: DemoStack) -> None:
    no_key = {"Authorization": "Bearer sy_wrong"}
    openai_401 = httpx.get(f"{demo.url}/v1/models", headers=no_key).json()
    assert openai_401 == {"error": {"message": "Invalid or expired token", "type": "invalid_request_error",
                                    "param": None, "code": "invalid_api_key"}}
    assert httpx.get(f"{demo.url}/api/tags", headers=no_key).json() == {"error": "Invalid or expired token"}
    assert httpx.post(f"{demo.url}/api/chat", headers=no_key, json={}).json() == {"error": "Invalid or expired token"}
    admin_401 = httpx.get(f"{demo.url}/api/admin/tenants", headers=no_key).json()
    assert admin_401 == {"error": {"code": "INVALID_TOKEN", "message": "Invalid or expired token"}}
    route = httpx.post(f"{demo.url}/v1/nothing", headers=bearer(demo.demo_key)).json()["error"]
    assert route["code"] == "unknown_url" and route["message"] == "Invalid URL (POST /v1/nothing)"
    assert httpx.get(f"{demo.url}/api/nothing").json() == {"error": "Invalid URL (GET /api/nothing)"}
    for path, shape in (("/v1/chat/completions", dict), ("/api/chat", str), ("/v1/messages", dict)):
        wrong_method = httpx.get(f"{demo.url}{path}", headers=bearer(demo.demo_key))
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST", path
        assert isinstance(wrong_method.json()["error"], shape), path
    bad_since = httpx.post(f"{demo.url}/api/stats", headers=bearer(demo.admin_key),
                           json={"model": "llama3.2", "since": 1e300})
    assert bad_since.status_code == 400 and bad_since.json()["error"]["field"] == "since"


# --- models -------------------------------------------------------------------------------------------


def test_models_retrieve_answers_the_openai_model_object(demo: DemoStack, upstream: Upstream) -> None:
    client = openai.OpenAI(base_url=f"{demo.url}/v1", api_key=upstream.key, max_retries=0)
    model = client.models.retrieve(upstream.model("translated"))
    assert (model.id, model.object, model.owned_by) == (upstream.model("translated"), "model", "switchyard")
    assert model.created > 0
    listed = {m.id for m in client.models.list()}
    assert all(client.models.retrieve(name).id == name for name in listed)
    narrow = openai.OpenAI(base_url=f"{demo.url}/v1", api_key=upstream.narrow_key, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        narrow.models.retrieve(upstream.model("translated"))     # exists, but not for this tenant
    assert httpx.get(f"{demo.url}/v1/models/llama3.2:latest", headers=bearer(demo.demo_key)).json()["id"] == \
        "llama3.2"                                                 # an alias finds the model


async def test_models_retrieve_finds_ids_with_any_characters_a_server_advertises(
        demo: DemoStack, upstream: Upstream) -> None:
    """Ids in UTF-8 and ids holding a literal `%` are read once, as the client percent-encoded them."""
    names = [f"{upstream.prefix}-café/ü:7b", f"{upstream.prefix}-100%41-off", f"{upstream.prefix}-a%2Fb"]
    endpoint = f"{upstream.prefix}-odd-ids"
    async with httpx.AsyncClient(base_url=demo.url, headers=bearer(demo.admin_key), timeout=30) as admin:
        for name in names:
            assert (await admin.post("/api/admin/models", json={"model_id": name})).status_code == 201
        assert (await admin.post("/api/admin/endpoints", json={
            "endpoint_id": endpoint, "provider_id": f"{upstream.prefix}-openai-kind", "base_url": upstream.sim.url,
            "models": names})).status_code == 201
        tenant, key = new_tenant(demo)
        try:
            client = openai.AsyncOpenAI(base_url=f"{demo.url}/v1", api_key=key, max_retries=0)
            await wait_for(lambda: _lists_all(client, names), 15, what="the odd ids in the tenant's listing")
            for name in names:
                assert (await client.models.retrieve(name)).id == name
                encoded = "".join(c if c.isascii() and c.isalnum() else "".join(f"%{b:02X}" for b in c.encode())
                                  for c in name)
                answer = await admin.get(f"/v1/models/{encoded}", headers=bearer(key))
                assert answer.status_code == 200 and answer.json()["id"] == name, (name, answer.text)
        finally:
            await admin.delete(f"/api/admin/endpoints/{endpoint}")
            await admin.delete(f"/api/admin/tenants/{tenant}")
            for name in names:
                await admin.delete(f"/api/admin/models/{quote(name, safe='')}")


async def _lists_all(client: openai.AsyncOpenAI, names: list[str]) -> bool:
    return set(names) <= {m.id async for m in client.models.list()}


# --- Ollama's root and the anonymous tenant -----------------------------------------------------------


def test_root_answers_ollama_is_running_without_a_key(demo: DemoStack) -> None:
    got = httpx.get(f"{demo.url}/")
    assert got.status_code == 200 and got.text == "Ollama is running"
    headed = httpx.head(f"{demo.url}/")
    assert headed.status_code == 200 and headed.headers["content-length"] == "17" and headed.content == b""


def test_without_an_anonymous_tenant_every_door_needs_a_key(demo: DemoStack) -> None:
    """All but what tells nothing of a tenant: `/` and `/api/version` (tools ask them before they send a key)."""
    for path in ("/api/tags", "/api/ps", "/v1/models"):
        assert httpx.get(f"{demo.url}{path}").status_code == 401, path


async def test_keyless_ollama_tools_work_under_the_anonymous_tenant(open_gateway: Gateway,
                                                                    upstream: Upstream) -> None:
    client = ollama.AsyncClient(host=open_gateway.url)               # no key, as the Ollama CLI sends
    assert (await client.list()).models
    assert {m.model for m in (await client.list()).models} >= {f"{upstream.model('translated')}:latest"}
    answer = await client.chat(model=upstream.model("translated"), messages=HI)
    assert answer.message.content and answer.eval_count == 16
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=30) as http:
        assert (await http.get("/api/version")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 200
        chat = await http.post("/v1/chat/completions", json={"model": upstream.model("translated"), "messages": HI})
        assert chat.status_code == 200
        wrong = await http.get("/api/tags", headers=bearer("sy_wrong"))
        assert wrong.status_code == 401                               # a wrong key is never anonymous
        for path in ("/api/admin/tenants", "/api/token_counts", "/api/config"):
            assert (await http.get(path)).status_code == 401, path    # admin and monitoring: never keyless
        narrow = await http.get("/api/tags", headers=bearer(upstream.narrow_key))
        assert [m["name"] for m in narrow.json()["models"]] == [f"{upstream.model('native')}:latest"]


# --- CORS --------------------------------------------------------------------------------------------


def test_preflight_is_answered_on_every_public_route_for_an_allowed_origin(open_gateway: Gateway) -> None:
    asked = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}
    for path in ("/v1/chat/completions", "/v1/models", "/api/chat", "/api/tags", "/api/admin/tenants", "/health",
                 "/openapi.json"):
        answer = httpx.options(f"{open_gateway.url}{path}", headers=asked)
        assert answer.status_code == 204, path
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in answer.headers["access-control-allow-methods"]
        assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
        assert "Origin" in answer.headers["vary"] and answer.headers["x-request-id"]
    refused = httpx.options(f"{open_gateway.url}/v1/chat/completions", headers={**asked, "Origin": "http://evil"})
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert refused.json()["error"]["code"] == "insufficient_permissions"


async def test_answers_to_an_allowed_origin_say_so_and_expose_the_gateways_headers(
        open_gateway: Gateway, upstream: Upstream) -> None:
    async with httpx.AsyncClient(base_url=open_gateway.url, timeout=30) as http:
        chat = await http.post("/v1/chat/completions", headers={"Origin": ORIGIN},
                               json={"model": upstream.model("translated"), "messages": HI, "stream": True})
        listing = await http.get("/api/tags", headers={"Origin": ORIGIN})
        other = await http.get("/api/tags", headers={"Origin": "http://evil"})
    for answer in (chat, listing):
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(demo: DemoStack) -> None:
    asked = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    answer = httpx.options(f"{demo.url}/v1/chat/completions", headers=asked)
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in httpx.get(f"{demo.url}/v1/models", headers={
        "Origin": ORIGIN, **bearer(demo.demo_key)}).headers


# --- what Ollama tools read ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_translated_ollama_answers_carry_the_four_measured_durations(demo: DemoStack, upstream: Upstream,
                                                                           stream: bool) -> None:
    upstream.sim.configure(latency_ms=40, token_interval_ms=2)
    try:
        client = ollama.AsyncClient(host=demo.url, headers=bearer(upstream.key))
        if stream:
            final = [part async for part in await client.chat(model=upstream.model("translated"), messages=HI,
                                                               stream=True)][-1]
        else:
            final = await client.chat(model=upstream.model("translated"), messages=HI)
    finally:
        upstream.sim.configure(latency_ms=0.0, token_interval_ms=0.0)
    durations = (final.total_duration, final.load_duration, final.eval_duration)
    assert all(d is not None and d >= 0 for d in durations), durations
    # a whole answer shows no first token to split the prompt's time at: its zero is left out, as Ollama leaves it
    assert (final.prompt_eval_duration is None) is not stream and (final.prompt_eval_duration or 0) >= 0
    assert final.eval_duration > 0 and final.total_duration >= 40_000_000        # the upstream's 40 ms at least
    assert final.load_duration + (final.prompt_eval_duration or 0) + final.eval_duration <= final.total_duration
    assert final.eval_count == 16


async def test_show_reports_what_the_upstream_says_and_unknown_otherwise(demo: DemoStack,
                                                                         upstream: Upstream) -> None:
    """The Ollama endpoint's own /api/show (the simulator says completion and tools) reaches the gateway's at the
    router's next probe; the OpenAI-compatible one says nothing of architecture: unknown."""
    client = ollama.AsyncClient(host=demo.url, headers=bearer(upstream.key))
    async with httpx.AsyncClient() as http:        # the simulator runs on this loop: never block it
        own = (await http.post(f"{upstream.sim.url}/api/show", json={"model": upstream.model("native")})).json()

    async def shown() -> ollama.ShowResponse | None:
        answer = await client.show(upstream.model("native"))
        return answer if answer.capabilities and "tools" in answer.capabilities else None

    native = await wait_for(shown, timeout_s=30, what="capabilities from the router's probe")
    assert native.capabilities == own["capabilities"]
    assert native.modelinfo["general.architecture"] == own["model_info"]["general.architecture"]
    translated = await client.show(upstream.model("translated"))
    assert translated.capabilities == ["completion"]
    assert translated.modelinfo["general.architecture"] == "unknown"


async def test_an_operator_adds_what_a_model_can_do_where_its_servers_say_nothing(demo: DemoStack,
                                                                                 upstream: Upstream) -> None:
    """A model only OpenAI-compatible servers serve was `["completion"]` to Ollama's clients, and llm-ollama then
    refused to offer it tools ("does not support tools") though the door translates them; the registry now takes
    the model's `capabilities`, and /api/show adds them to what its servers say."""
    client = ollama.AsyncClient(host=demo.url, headers=bearer(upstream.key))
    model = upstream.model("translated")
    async with httpx.AsyncClient(base_url=demo.url, headers={"X-API-Key": demo.admin_key}, timeout=30) as admin:
        for hostile, field in ((["flying"], "capabilities"), (["tools", "tools"], "capabilities[1]"),
                               ("tools", "capabilities"), ([1], "capabilities")):
            refused = await admin.put(f"/api/admin/models/{model}", json={"capabilities": hostile})
            assert refused.status_code == 400 and refused.json()["error"]["field"].startswith(field), refused.text
        changed = await admin.put(f"/api/admin/models/{model}", json={"capabilities": ["tools", "vision"]})
        assert changed.status_code == 200, changed.text
        try:
            shown = await client.show(model)
            assert shown.capabilities == ["completion", "tools", "vision"]          # the servers' word, then ours
            exported = (await admin.get("/api/admin/registry/export")).json()
            assert [m.get("capabilities") for m in exported["models"] if m["id"] == model] == [["tools", "vision"]]
        finally:
            await admin.put(f"/api/admin/models/{model}", json={"capabilities": []})
    assert (await client.show(model)).capabilities == ["completion"]


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"), ("/api/chat", "ollama"),
                                             ("/v1/messages", "anthropic")])
def test_a_request_the_http_server_refuses_gets_its_doors_error_shape(demo: DemoStack, path: str, shape: str) -> None:
    """Framing no server may guess at (a length and chunked at once: request smuggling) is refused before the
    gateway's code runs, still in the error shape of the door the path belongs to."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", demo.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n"
                     "\r\n0\r\n\r\n".encode())
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head.lower()
    error = json.loads(body)
    if shape == "ollama":
        assert isinstance(error["error"], str) and "Transfer-Encoding" in error["error"]
    elif shape == "anthropic":
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert error["error"]["type"] == "invalid_request_error" and "Transfer-Encoding" in error["error"]["message"]


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/api/tags", "/ui/"])
def test_head_is_answered_as_get_would_be_without_the_body(demo: DemoStack, path: str) -> None:
    """RFC 9110 9.3.2: HEAD was a 405 on every route that names GET (monitoring probes and `curl -I` use it)."""
    headers = {"Authorization": f"Bearer {demo.demo_key}"}
    head = httpx.head(f"{demo.url}{path}", headers=headers, timeout=30)
    get = httpx.get(f"{demo.url}{path}", headers=headers, timeout=30)
    assert head.status_code == get.status_code == 200, (head.status_code, get.status_code)
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_a_body_a_json_encoder_streams_token_by_token_is_read(demo: DemoStack) -> None:
    """A client streaming its JSON as the encoder makes it (`json.JSONEncoder().iterencode` into httpx) sends about
    one chunk per 4 bytes: 487 KB of chat came in 120,013 chunks, which the bound on chunks (one per 64 bytes of the
    body limit) refused 400."""
    import json

    body = {"model": "llama3.2", "max_tokens": 4,
            "messages": [{"role": "user", "content": f"line {n}"} for n in range(12_000)]}
    pieces = list(json.JSONEncoder().iterencode(body))
    assert len(pieces) > 65_536                     # more chunks than the old bound allowed
    served = httpx.post(f"{demo.url}/v1/chat/completions", headers={"Authorization": f"Bearer {demo.demo_key}"},
                        content=(piece.encode() for piece in pieces), timeout=60)
    assert served.status_code == 200, served.text[:300]


@pytest.fixture(scope="module")
def impatient(demo: DemoStack, urls) -> Iterator[Gateway]:
    """A gateway that waits half a second for a stalled request body."""
    gateway = start_gateway(demo, urls, http_body_timeout_s="0.5")
    yield gateway
    stop_gateway(gateway)


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"), ("/api/chat", "ollama"),
                                             ("/api/admin/tenants", "admin")])
def test_a_body_that_stops_coming_is_answered_408_in_the_doors_shape(demo: DemoStack, impatient: Gateway,
                                                                      path: str, shape: str) -> None:
    import json
    import socket

    port = int(impatient.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {demo.demo_key}\r\n"
                     f"content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\":".encode())
        got = b""
        while chunk := sock.recv(65536):            # the gateway answers, then closes
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert "did not arrive" in (error if isinstance(error, str) else error["message"])
