"""End to end: the gateway's own /openapi.json, fuzzed with schemathesis against the demo stack.

Every documented operation is called with generated requests (its explicit examples, then a few generated
ones): none may answer 5xx, and every answer must match the document (status, content type, body, for
errors the door's own error shape). Reading routes are called with the admin key; everything else with the
demo tenant's member key, so admin changes are refused (403, checked too) and the shared demo stack keeps
its registry. The usage stream never ends by design and is left out (its own tests read it).
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance, response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import DemoStack

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
READING = {"GET", "HEAD"}


def test_every_answer_matches_the_document(demo: DemoStack) -> None:
    api = schemathesis.openapi.from_url(f"{demo.url}/openapi.json").exclude(path="/api/usage-stream")
    failures: list[str] = []
    tested = 0
    for found in api.get_all_operations():
        operation = found.ok()
        key = demo.admin_key if operation.method.upper() in READING else demo.demo_key

        @given(case=operation.as_strategy())
        @settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate], database=None,
                  derandomize=True, suppress_health_check=list(HealthCheck))
        def call(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)

        try:
            call()
        except Exception as exc:  # noqa: BLE001 — every operation's failure is collected, then all reported
            failures.append(f"{operation.label}: {exc}")
        tested += 1
    assert tested >= 60
    assert not failures, "\n\n".join(failures)


def test_document_covers_every_public_route(demo: DemoStack) -> None:
    """Inference (RSGI), Ollama, monitoring and admin routes are all there, each with a request id header and
    an error answer in its door's shape."""
    document = httpx.get(f"{demo.url}/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    paths = document["paths"]
    for path, method in [("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/embeddings", "post"),
                         ("/v1/models", "get"), ("/v1/models/{model_id}", "get"), ("/api/chat", "post"),
                         ("/api/generate", "post"), ("/api/embed", "post"), ("/api/embeddings", "post"),
                         ("/api/tags", "get"), ("/api/show", "post"), ("/api/version", "get"), ("/", "head"),
                         ("/health", "get"), ("/metrics", "get"), ("/api/stats", "post"),
                         ("/api/admin/tenants", "post"), ("/api/admin/tenants/{tenant_id}/limits", "put")]:
        operation = paths[path][method]
        assert "x-request-id" in operation["responses"]["default"]["headers"], (path, method)
    errors = {path: paths[path][next(iter(paths[path]))]["responses"]["default"]["content"]["application/json"]
              ["schema"]["$ref"] for path in ("/v1/models", "/api/tags", "/api/admin/tenants")}
    assert errors == {"/v1/models": "#/components/schemas/OpenAIError",
                      "/api/tags": "#/components/schemas/OllamaError",
                      "/api/admin/tenants": "#/components/schemas/PlainError"}
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "command" not in paths["/api/admin/tenants"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]


def test_docs_page_and_its_assets_come_from_the_gateway(demo: DemoStack) -> None:
    page = httpx.get(f"{demo.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/docs/vendor/swagger-ui-bundle.js", "/docs/vendor/swagger-ui.css", "/docs/docs.js",
                  "/docs/vendor/swagger-ui-LICENSE.txt"):
        assert f'"{asset}"' in page.text or asset.endswith((".txt", ".js")), asset
        answer = httpx.get(f"{demo.url}{asset}")
        assert answer.status_code == 200 and answer.content, asset
    assert "http" not in httpx.get(f"{demo.url}/docs/docs.js").text       # no URL elsewhere: validator off
    assert httpx.get(f"{demo.url}/docs/../app.py").status_code == 404
