"""The gateway's OpenAPI document, built in this process from the app's own routes: every operation states
what it takes and what it answers, so a generated client or a fuzzer knows every route's shapes."""

from __future__ import annotations

import re
from typing import Any

import pytest
from switchyard_gateway.services.gateway.app import create_app
from switchyard_gateway.services.gateway.openapi.document import build
from switchyard_gateway.services.gateway.settings import Settings

INFERENCE = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
             "/v1/messages/count_tokens",
             "/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
# Actions whose path says it all: they read no body.
BODILESS = re.compile(r"/(test|reset|refresh|refresh-registry|discover-models)$")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    built = create_app(Settings())
    return build(getattr(built, "litestar", built), INFERENCE)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items() for method, op in item.items()]


def test_every_json_answer_has_a_schema(document: dict[str, Any]) -> None:
    unstated = []
    for method, path, op in _operations(document):
        answer = next(v for k, v in op["responses"].items() if k.startswith(("1", "2")))
        for media_type, content in answer.get("content", {}).items():
            if media_type == "application/json" and content["schema"] in ({}, {"type": "object"}) \
                    and path not in ("/openapi.json", "/api/admin/registry/export"):     # documents, any JSON
                unstated.append(f"{method} {path}")
    assert not unstated, f"answers documented as any JSON: {unstated}"


def test_every_route_that_reads_a_body_documents_it(document: dict[str, Any]) -> None:
    unstated = [f"{method} {path}" for method, path, op in _operations(document)
                if method in ("POST", "PUT") and "requestBody" not in op and not BODILESS.search(path)]
    assert not unstated, f"bodies not documented: {unstated}"


def test_a_route_serving_several_operations_is_documented_as_each(document: dict[str, Any]) -> None:
    paths = document["paths"]
    assert "/api/admin/models/{item}" not in paths
    assert paths["/api/admin/models/warmup"]["post"]["requestBody"]
    test = paths["/api/admin/models/{model_id}/test"]["post"]
    assert [p["name"] for p in test["parameters"]] == ["model_id"]


def test_sign_in_needs_no_key_and_answers_tokens(document: dict[str, Any]) -> None:
    login = document["paths"]["/api/auth/login"]["post"]
    assert "security" not in login
    answer = login["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/TokenPair"}
    assert set(document["components"]["schemas"]["TokenPair"]["required"]) >= {"access_token", "refresh_token"}
