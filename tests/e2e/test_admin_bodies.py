"""The admin API reads every field of a body or refuses it: a misspelt field (`rol`), a customization the
template does not have, or an id in the body other than the URL's changed nothing and answered 2xx."""

from __future__ import annotations

import uuid

import httpx

from tests.conftest import DemoStack
from tests.e2e.test_quota_e2e import admin

PASSWORD = "correct horse battery staple"


def refused(reply: httpx.Response, field: str) -> None:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert isinstance(error, dict) and field in (error.get("field") or "") + error.get("message", ""), error


def test_a_user_field_the_api_does_not_have_is_refused_not_dropped(demo: DemoStack) -> None:
    username = f"u{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=f"{demo.url}/api/admin", headers=admin(demo), timeout=30) as http:
        reply = http.post("/users", json={"username": username, "password": PASSWORD, "tenant_id": "demo",
                                          "rol": "admin"})
        assert reply.status_code == 400 and reply.json()["error"]["field"] == "rol", reply.text
        assert http.get(f"/users/{username}").status_code == 404                  # nothing was created
        created = http.post("/users", json={"username": username, "password": PASSWORD, "tenant_id": "demo"})
        assert created.status_code == 201, created.text
        shown = http.get(f"/users/{username}").json()
        assert http.put(f"/users/{username}", json={"rol": "admin"}).status_code == 400
        assert http.put(f"/users/{username}", json={"password_hash": "x"}).status_code == 400
        refused(http.put(f"/users/{username}", json={**shown, "username": "someone@else.com"}), "username")
        edited = http.put(f"/users/{username}", json={**shown, "display_name": "Edited"})   # a GET, sent back
        assert edited.status_code == 200 and edited.json()["user"]["display_name"] == "Edited", edited.text
        assert http.get(f"/users/{username}").json()["role"] == "member"
        http.delete(f"/users/{username}")


def test_an_id_in_the_body_other_than_the_urls_is_refused(demo: DemoStack) -> None:
    tenant = f"ids-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=f"{demo.url}/api/admin", headers=admin(demo), timeout=30) as http:
        assert http.post("/tenants", json={"tenant_id": tenant}).status_code == 201
        try:
            refused(http.put(f"/tenants/{tenant}", json={"tenant_id": "demo", "display_name": "X"}), "tenant_id")
            assert http.get(f"/tenants/{tenant}").json().get("display_name", "") == ""      # unchanged
            same = http.put(f"/tenants/{tenant}", json={"tenant_id": tenant, "display_name": "Same id"})
            assert same.status_code == 200 and same.json()["resource"]["display_name"] == "Same id", same.text
            refused(http.post(f"/tenants/{tenant}/keys", json={"tenant_id": "demo", "name": "k"}), "tenant_id")
            keys = http.get(f"/tenants/{tenant}/keys").json()
            assert keys == [] or keys.get("keys", keys) == [], keys
        finally:
            http.delete(f"/tenants/{tenant}")


def test_a_template_customization_the_template_does_not_have_is_refused(demo: DemoStack) -> None:
    endpoint = f"tpl-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=f"{demo.url}/api/admin", headers=admin(demo), timeout=30) as http:
        reply = http.post("/templates/vllm/apply", json={"endpoint_id": endpoint, "customizations": {
            "base_url": "http://127.0.0.1:9", "models": ["llama3.2"], "priorty": 5}})
        refused(reply, "priorty")
        assert http.get(f"/endpoints/{endpoint}").status_code == 404


def test_an_unknown_limit_is_named_as_the_field(demo: DemoStack) -> None:
    with httpx.Client(base_url=f"{demo.url}/api/admin", headers=admin(demo), timeout=30) as http:
        reply = http.put("/tenants/demo/limits", json={"daily_tokenz": 5})
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["field"] == "daily_tokenz" and error["validationErrors"][0]["field"] == "daily_tokenz", error
