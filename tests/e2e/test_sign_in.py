"""End to end: users and sign-in on `switchyard up --demo` (whose gateway signs with the JWT secret `up` keeps in
keys.env), and brute-force protection on a gateway of its own that trusts X-Forwarded-For."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import jwt
import pytest

from tests.conftest import DemoStack, wait_for
from tests.e2e.test_quota_e2e import Gateway, admin, start_gateway, stop_gateway

PASSWORD = "correct horse battery staple"


def secret(demo: DemoStack) -> str:
    keys = dict(line.split("=", 1) for line in (demo.data_dir / "keys.env").read_text().split())
    return keys["SWITCHYARD_JWT_SECRET"]


def new_user(demo: DemoStack, role: str = "member", tenant: str = "demo", password: str = PASSWORD) -> str:
    username = f"u{uuid.uuid4().hex[:10]}@example.com"
    r = httpx.post(f"{demo.url}/api/admin/users", headers=admin(demo),
                   json={"username": username, "password": password, "tenant_id": tenant, "role": role,
                         "display_name": "Test User"})
    assert r.status_code == 201, r.text
    assert password not in r.text and "argon2" not in r.text
    assert r.json()["user"] == {**r.json()["user"], "username": username, "tenant_id": tenant, "role": role}
    return username


def login(url: str, username: str, password: str = PASSWORD, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/api/auth/login", json={"username": username, "password": password}, headers=headers,
                      timeout=30)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_user_signs_in_uses_the_api_refreshes_and_signs_out(demo: DemoStack) -> None:
    username = new_user(demo)
    signed = login(demo.url, username)
    assert signed.status_code == 200, signed.text
    tokens = signed.json()
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 900 and tokens["refresh_expires_in"] == 604800
    claims = jwt.decode(tokens["access_token"], secret(demo), algorithms=["HS256"], issuer="switchyard")
    assert (claims["sub"], claims["tenant"], claims["role"], claims["typ"]) == (username, "demo", "member", "access")
    assert 899 < claims["exp"] - claims["iat"] <= 900

    me = httpx.get(f"{demo.url}/api/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json() == {"kind": "user", "tenant_id": "demo", "role": "member", "username": username,
                         "display_name": "Test User"}
    assert httpx.get(f"{demo.url}/v1/models", headers=bearer(tokens["access_token"])).status_code == 200
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(tokens["access_token"])).status_code == 403
    refresh_as_bearer = httpx.get(f"{demo.url}/v1/models", headers=bearer(tokens["refresh_token"]))
    assert refresh_as_bearer.status_code == 401, "a refresh token is not a bearer token"

    refreshed = httpx.post(f"{demo.url}/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text
    access2 = refreshed.json()["access_token"]
    assert httpx.get(f"{demo.url}/v1/models", headers=bearer(access2)).status_code == 200

    out = httpx.post(f"{demo.url}/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert out.status_code == 200 and out.json() == {"revoked": True}
    again = httpx.post(f"{demo.url}/api/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert again.json() == {"revoked": False}
    for access in (tokens["access_token"], access2):      # the session's access tokens end with it
        assert httpx.get(f"{demo.url}/v1/models", headers=bearer(access)).status_code == 401
    dead = httpx.post(f"{demo.url}/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert dead.status_code == 401 and dead.json()["error"]["code"] == "INVALID_TOKEN"
    assert httpx.get(f"{demo.url}/v1/models",
                     headers=bearer(login(demo.url, username).json()["access_token"])).status_code == 200


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(demo: DemoStack) -> None:
    username = new_user(demo)
    wrong, unknown = login(demo.url, username, PASSWORD + "!"), login(demo.url, f"nobody-{uuid.uuid4().hex[:8]}")
    for refused in (wrong, unknown):
        assert refused.status_code == 401
        assert refused.json() == {"error": {"code": "INVALID_CREDENTIALS", "message": "Invalid username or password"}}
    for body in ({"username": username}, {"username": 7, "password": PASSWORD}, "not json"):
        bad = httpx.post(f"{demo.url}/api/auth/login", **({"json": body} if not isinstance(body, str)
                                                           else {"content": body,
                                                                 "headers": {"content-type": "application/json"}}))
        assert bad.status_code == 400 and bad.json()["error"]["code"] in ("VALIDATION_ERROR", "INVALID_JSON"), bad.text
    huge = login(demo.url, "x" * 100_000, "y" * 100_000)
    assert huge.status_code == 401, "absurd lengths are refused without hashing anything"


def test_forged_expired_and_wrong_kind_refresh_tokens_are_refused(demo: DemoStack) -> None:
    username = new_user(demo)
    real = login(demo.url, username).json()
    base = jwt.decode(real["refresh_token"], secret(demo), algorithms=["HS256"], issuer="switchyard")
    forged = [
        jwt.encode(base, "another-secret-that-is-long-enough!!", algorithm="HS256"),
        jwt.encode({**base, "exp": int(time.time()) - 1}, secret(demo), algorithm="HS256"),
        jwt.encode({**base, "typ": "access", "sid": base["jti"]}, secret(demo), algorithm="HS256"),
        jwt.encode({**base, "iss": "someone-else"}, secret(demo), algorithm="HS256"),
        jwt.encode({**base, "sub": "admin-wannabe"}, secret(demo), algorithm="HS256"),
        jwt.encode({k: v for k, v in base.items() if k != "jti"}, secret(demo), algorithm="HS256"),
        real["refresh_token"][:-4] + "AAAA",
        "a.b.c", "",
    ]
    for token in forged:
        r = httpx.post(f"{demo.url}/api/auth/refresh", json={"refresh_token": token})
        assert r.status_code == 401, (token, r.text)
    none_alg = jwt.encode({**base}, None, algorithm="none")
    assert httpx.post(f"{demo.url}/api/auth/refresh", json={"refresh_token": none_alg}).status_code == 401


def test_a_password_change_role_change_or_removal_ends_the_tokens_issued_before(demo: DemoStack) -> None:
    username = new_user(demo, role="admin", tenant="admin")
    tokens = login(demo.url, username).json()
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(tokens["access_token"])).status_code == 200
    changed = httpx.put(f"{demo.url}/api/admin/users/{username}", headers=admin(demo),
                        json={"password": "a brand new passphrase"})
    assert changed.status_code == 200 and "a brand new passphrase" not in changed.text and "argon2" not in changed.text
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(tokens["access_token"])).status_code == 401
    assert httpx.post(f"{demo.url}/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code \
        == 401
    assert login(demo.url, username).status_code == 401, "the old password is gone"
    fresh = login(demo.url, username, "a brand new passphrase").json()["access_token"]
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(fresh)).status_code == 200
    demoted = httpx.put(f"{demo.url}/api/admin/users/{username}", headers=admin(demo), json={"role": "member"})
    assert demoted.json()["user"]["role"] == "member"
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(fresh)).status_code == 401
    assert httpx.delete(f"{demo.url}/api/admin/users/{username}", headers=admin(demo)).status_code == 200
    assert login(demo.url, username, "a brand new passphrase").status_code == 401
    assert httpx.get(f"{demo.url}/api/admin/users/{username}", headers=admin(demo)).status_code == 404


def test_user_administration_validates_and_never_shows_a_hash(demo: DemoStack) -> None:
    username = new_user(demo)
    listed = httpx.get(f"{demo.url}/api/admin/users", params={"tenant_id": "demo"}, headers=admin(demo))
    assert username in {u["username"] for u in listed.json()} and "argon2" not in listed.text
    cases = [
        ({"username": username, "password": PASSWORD, "tenant_id": "demo"}, 409, "CONFLICT"),
        ({"username": "bad name", "password": PASSWORD, "tenant_id": "demo"}, 400, "INVALID_IDENTIFIER"),
        ({"username": "short-pw", "password": "1234567", "tenant_id": "demo"}, 422, "VALIDATION_ERROR"),
        ({"username": "no-tenant", "password": PASSWORD, "tenant_id": "nope"}, 404, "TENANT_NOT_FOUND"),
        ({"username": "root", "password": PASSWORD, "tenant_id": "demo", "role": "superuser"}, 400,
         "VALIDATION_ERROR"),
        ({"username": "u" * 65, "password": PASSWORD, "tenant_id": "demo"}, 400, "VALIDATION_ERROR"),
        ({"username": "long-pw", "password": "p" * 1025, "tenant_id": "demo"}, 400, "VALIDATION_ERROR"),
    ]
    for body, status, code in cases:
        r = httpx.post(f"{demo.url}/api/admin/users", headers=admin(demo), json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)
        assert r.json()["error"]["validationErrors"] if status in (400, 422) else True
        assert body["password"] not in r.text
    member = login(demo.url, username).json()["access_token"]
    assert httpx.get(f"{demo.url}/api/admin/users", headers=bearer(member)).status_code == 403
    logs = "".join(p.read_text(errors="replace") for p in (demo.data_dir / "logs").glob("*.log"))
    assert PASSWORD not in logs and "$argon2id$" not in logs


def test_me_describes_a_key_too_and_x_tenant_id_must_match(demo: DemoStack) -> None:
    me = httpx.get(f"{demo.url}/api/auth/me", headers=bearer(demo.demo_key)).json()
    assert (me["kind"], me["tenant_id"], me["role"]) == ("key", "demo", "member") and "username" not in me
    other = httpx.get(f"{demo.url}/v1/models", headers={**bearer(demo.demo_key), "X-Tenant-ID": "admin"})
    assert other.status_code == 403
    same = httpx.get(f"{demo.url}/v1/models", headers={**bearer(demo.demo_key), "X-Tenant-ID": "demo"})
    assert same.status_code == 200


# --- tokens stand for the credentials checked; refresh tokens are spent --------------------------------------


def refresh(url: str, token: str) -> httpx.Response:
    return httpx.post(f"{url}/api/auth/refresh", json={"refresh_token": token}, timeout=30)


def forged(demo: DemoStack, token: str, **claims: object) -> str:
    """One of our tokens signed again with some claims changed: what a gateway signs when it loses a race."""
    kept = jwt.decode(token, secret(demo), algorithms=["HS256"], issuer="switchyard")
    return jwt.encode({k: v for k, v in {**kept, **claims}.items() if v is not None}, secret(demo), algorithm="HS256")


def test_a_token_signed_after_a_change_for_the_credentials_before_it_is_refused(demo: DemoStack) -> None:
    """The race of a sign-in checked against the old password (or a user since removed and made again) and signed
    after the change: its `iat` is later than the change, which was all that was compared; 3 runs of two sign-in
    loops against a password change each left refresh tokens that worked for 7 days. A token names the credential
    version the registry checked (`ver`), and stands while that is the user's; one without is refused."""
    username = new_user(demo, role="admin", tenant="admin")
    tokens = login(demo.url, username).json()
    changed = httpx.put(f"{demo.url}/api/admin/users/{username}", headers=admin(demo),
                        json={"password": PASSWORD + "!"})
    assert changed.status_code == 200
    late = {"iat": round(time.time(), 3), "jti": uuid.uuid4().hex}
    assert refresh(demo.url, forged(demo, tokens["refresh_token"], **late)).status_code == 401
    assert httpx.get(f"{demo.url}/api/admin/tenants",
                     headers=bearer(forged(demo, tokens["access_token"], **late))).status_code == 401

    fresh = login(demo.url, username, PASSWORD + "!").json()
    assert httpx.delete(f"{demo.url}/api/admin/users/{username}", headers=admin(demo)).status_code == 200
    assert new_user_named(demo, username, role="admin", tenant="admin")
    late = {"iat": round(time.time(), 3), "jti": uuid.uuid4().hex}
    assert refresh(demo.url, forged(demo, fresh["refresh_token"], **late)).status_code == 401
    assert httpx.get(f"{demo.url}/api/admin/tenants",
                     headers=bearer(forged(demo, fresh["access_token"], **late))).status_code == 401

    now = login(demo.url, username).json()["access_token"]
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(now)).status_code == 200
    unversioned = forged(demo, now, ver=None, jti=uuid.uuid4().hex)     # as signed before tokens carried `ver`
    assert httpx.get(f"{demo.url}/api/admin/tenants", headers=bearer(unversioned)).status_code == 401


def new_user_named(demo: DemoStack, username: str, role: str, tenant: str) -> bool:
    r = httpx.post(f"{demo.url}/api/admin/users", headers=admin(demo),
                   json={"username": username, "password": PASSWORD, "tenant_id": tenant, "role": role})
    return r.status_code == 201


def test_a_refresh_token_from_just_before_a_promotion_mints_no_admin_token(demo: DemoStack) -> None:
    """Tokens issued up to 50 ms before a role change survived it (clock slack): a member's refresh token minted an
    admin access token once the member was promoted 10 ms after signing in. Versions are equal or they are not."""
    username = new_user(demo)
    tokens = login(demo.url, username).json()
    promoted = httpx.put(f"{demo.url}/api/admin/users/{username}", headers=admin(demo), json={"role": "admin"})
    changed_at = datetime.fromisoformat(promoted.json()["user"]["password_changed_at"]).timestamp()
    just_before = {"iat": round(changed_at - 0.01, 3)}
    minted = refresh(demo.url, forged(demo, tokens["refresh_token"], **just_before))
    assert minted.status_code == 401, minted.text
    assert httpx.get(f"{demo.url}/v1/models",
                     headers=bearer(forged(demo, tokens["access_token"], **just_before))).status_code == 401


async def test_a_refresh_spends_its_token_and_a_client_racing_itself_gets_one_new_pair(demo: DemoStack) -> None:
    """Rotation: a refresh answers a new refresh token (before, the same one came back, good for 7 days beside any
    copy of it). Two refreshes of one token at once (a client racing itself, on either gateway worker) both get the
    same new pair: one live refresh token per session, and the honest client is not signed out."""
    username = new_user(demo)
    tokens = login(demo.url, username).json()
    async with httpx.AsyncClient(timeout=30) as client:
        both = await asyncio.gather(*(client.post(f"{demo.url}/api/auth/refresh", json={
            "refresh_token": tokens["refresh_token"]}) for _ in range(2)))
    assert [r.status_code for r in both] == [200, 200], [r.text for r in both]
    pair = both[0].json()
    assert both[1].json() == pair, "the same pair for the same token"
    assert pair["refresh_token"] != tokens["refresh_token"] and pair["access_token"] != tokens["access_token"]
    assert pair["refresh_expires_in"] <= tokens["refresh_expires_in"], "refreshing does not lengthen the session"
    sessions = {jwt.decode(t, secret(demo), algorithms=["HS256"], issuer="switchyard")["sid"]
                for t in (tokens["refresh_token"], pair["refresh_token"], pair["access_token"])}
    assert len(sessions) == 1
    assert httpx.get(f"{demo.url}/v1/models", headers=bearer(pair["access_token"])).status_code == 200
    again = refresh(demo.url, pair["refresh_token"])
    assert again.status_code == 200 and again.json()["refresh_token"] not in (pair["refresh_token"],
                                                                             tokens["refresh_token"])


@pytest.fixture(scope="module")
def strict(demo: DemoStack, urls) -> Iterator[Gateway]:
    """A second gateway whose refresh tokens have no grace: any second use is a reuse."""
    gateway = start_gateway(demo, urls, jwt_secret=secret(demo), refresh_reuse_grace_s="0")
    yield gateway
    stop_gateway(gateway)


async def test_a_refresh_token_used_again_ends_its_whole_session_on_every_gateway(demo: DemoStack,
                                                                                 strict: Gateway) -> None:
    """Reuse detection (RFC 9700 §4.14.2): the owner refreshed on one gateway; a copy of the spent token presented on
    another ends the session, the owner's new tokens too, everywhere: the server cannot tell which is the thief."""
    username = new_user(demo)
    tokens = login(demo.url, username).json()
    owner = refresh(demo.url, tokens["refresh_token"]).json()
    stolen = refresh(strict.url, tokens["refresh_token"])
    assert stolen.status_code == 401 and stolen.json()["error"]["code"] == "INVALID_TOKEN", stolen.text
    assert "used already" in stolen.json()["error"]["message"]
    await wait_for(lambda: httpx.get(f"{demo.url}/v1/models", headers=bearer(owner["access_token"])).status_code
                   == 401, what="the owner's new access token to end with the session")
    assert refresh(demo.url, owner["refresh_token"]).status_code == 401
    assert httpx.get(f"{demo.url}/v1/models", headers=bearer(tokens["access_token"])).status_code == 401
    assert login(demo.url, username).status_code == 200, "signing in again starts a new session"


def test_sign_in_and_the_admin_guard_answer_one_shape_in_the_same_words(demo: DemoStack) -> None:
    """`/api/auth/me` and the admin guard answered `{"error": "<message>"}` where the other sign-in routes answer
    `{"error": {"code", "message"}}`; an array was "Expected `object`, got `array`" to logout and "Expected a JSON
    object" to refresh; a number too large for a float named the field `""`, "at `$[...]`"."""
    invalid = {"error": {"code": "INVALID_TOKEN", "message": "Invalid or expired token"}}
    for r in (httpx.get(f"{demo.url}/api/auth/me"), httpx.get(f"{demo.url}/api/auth/me", headers=bearer("a.b.c")),
              httpx.post(f"{demo.url}/api/auth/logout"), refresh(demo.url, "a.b.c"),
              httpx.get(f"{demo.url}/api/admin/users", headers=bearer("a.b.c"))):
        assert (r.status_code, r.json()) == (401, invalid), (r.url, r.text)
    member = httpx.get(f"{demo.url}/api/admin/users", headers=bearer(demo.demo_key))
    assert (member.status_code, member.json()) == (403, {"error": {"code": "FORBIDDEN",
                                                                   "message": "Admin role required"}})
    for path in ("/api/auth/login", "/api/auth/refresh", "/api/auth/logout"):
        r = httpx.post(f"{demo.url}{path}", json=["not", "an", "object"])
        assert r.status_code == 400 and r.json()["error"]["code"] == "VALIDATION_ERROR", (path, r.text)
        assert r.json()["error"]["message"] == "Expected a JSON object", (path, r.text)
    huge = httpx.post(f"{demo.url}/api/auth/login", content=b'{"username": 1e999, "password": "x"}',
                      headers={"content-type": "application/json"})
    assert huge.status_code == 400 and huge.json()["error"]["field"] == "username", huge.text
    assert "$[...]" not in huge.text and huge.json()["error"]["validationErrors"][0]["field"] == "username"
    wrong_method = httpx.get(f"{demo.url}/api/auth/login")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")


# --- brute force, on a gateway that trusts X-Forwarded-For (so each test has addresses of its own) -----------


@pytest.fixture(scope="module")
def guarded(demo: DemoStack, urls) -> Iterator[Gateway]:
    gateway = start_gateway(demo, urls, jwt_secret=secret(demo), trust_forwarded_for="true", login_user_failures="3",
                            login_address_failures="6", login_backoff_s="2", login_backoff_max_s="30",
                            login_window_s="60")
    yield gateway
    stop_gateway(gateway)


def address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


async def test_one_username_waits_after_repeated_failures_even_with_the_right_password(demo: DemoStack,
                                                                                       guarded: Gateway) -> None:
    username = new_user(demo)
    for attempt in range(3):
        r = login(guarded.url, username, "guess-%d-wrong" % attempt, **{"X-Forwarded-For": address()})
        assert r.status_code == 401
    assert int(r.headers["retry-after"]) >= 1, "the third failure already says how long to wait"
    locked = login(guarded.url, username, **{"X-Forwarded-For": address()})
    assert locked.status_code == 429, locked.text
    assert locked.json()["error"]["code"] == "TOO_MANY_ATTEMPTS" and 1 <= int(locked.headers["retry-after"]) <= 2
    on_demo = login(demo.url, username)
    assert on_demo.status_code == 429, "every gateway agrees: the counters are in Valkey"
    await wait_for(lambda: login(guarded.url, username, **{"X-Forwarded-For": address()}).status_code == 200,
                   timeout_s=10, interval_s=0.5, what="the wait to pass")
    r = login(guarded.url, username, "wrong again", **{"X-Forwarded-For": address()})
    assert r.status_code == 401 and "retry-after" not in r.headers, "a success forgot the username's failures"


def test_one_address_waits_after_failures_across_usernames_and_waits_longer_each_time(demo: DemoStack,
                                                                                     guarded: Gateway) -> None:
    here = {"X-Forwarded-For": address()}
    username = new_user(demo)
    for _ in range(6):
        assert login(guarded.url, f"spray-{uuid.uuid4().hex[:8]}", "password1", **here).status_code == 401
    refused = login(guarded.url, username, **here)
    assert refused.status_code == 429
    assert login(guarded.url, username, **{"X-Forwarded-For": address()}).status_code == 200, \
        "another address is not held up"
    time.sleep(int(refused.headers["retry-after"]) + 0.1)     # the wait is what is under test
    seventh = login(guarded.url, f"spray-{uuid.uuid4().hex[:8]}", "password1", **here)
    assert seventh.status_code == 401 and int(seventh.headers["retry-after"]) >= 3, "the wait doubled"


async def test_guesses_sent_together_get_no_more_checks_than_the_budget(demo: DemoStack, guarded: Gateway) -> None:
    """An attempt takes its slot before its password is checked: guesses sent at once (each from its own address)
    get at most the username's 3 checks, however many are in flight, and the right password sent while they are
    is refused too (before, every guess in flight was checked, and the right one signed in)."""
    username = new_user(demo)
    async with httpx.AsyncClient(timeout=60) as client:
        def attempt(password: str) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(client.post(f"{guarded.url}/api/auth/login", headers={
                "X-Forwarded-For": address()}, json={"username": username, "password": password}))

        guesses = [attempt(f"wrong-guess-{i:02d}") for i in range(15)]
        await asyncio.wait(guesses, return_when=asyncio.FIRST_COMPLETED)
        right = await attempt(PASSWORD)
        statuses = [r.status_code for r in await asyncio.gather(*guesses)]
    assert statuses.count(401) <= 3 and statuses.count(401) + statuses.count(429) == 15, statuses
    assert right.status_code == 429, right.text


async def test_one_address_gets_no_more_checks_in_flight_than_its_budget(demo: DemoStack, guarded: Gateway) -> None:
    here = {"X-Forwarded-For": address()}
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(*(client.post(f"{guarded.url}/api/auth/login", headers=here, json={
            "username": f"spray-{uuid.uuid4().hex[:8]}", "password": "password1"}) for _ in range(40)))
    statuses = [r.status_code for r in answers]
    assert statuses.count(401) <= 6 and statuses.count(401) + statuses.count(429) == 40, statuses


def test_the_address_is_the_one_the_trusted_proxy_appended_not_what_the_client_wrote(demo: DemoStack,
                                                                                    guarded: Gateway) -> None:
    """A proxy that appends to X-Forwarded-For keeps what the client sent in front: a client writing a new address
    there with each guess must still spend one address's budget."""
    proxy_saw = address()
    for _ in range(6):
        spoofed = {"X-Forwarded-For": f"{address()}, {proxy_saw}"}
        assert login(guarded.url, f"spray-{uuid.uuid4().hex[:8]}", "password1", **spoofed).status_code == 401
    refused = login(guarded.url, new_user(demo), **{"X-Forwarded-For": f"{address()},{proxy_saw}"})
    assert refused.status_code == 429, refused.text


def test_sign_in_and_user_bodies_nested_too_deeply_are_a_400(demo: DemoStack) -> None:
    """Every route reads its JSON body with the same reader, which refuses nesting too deep to read (before, the
    sign-in and users routes answered 500 with a RecursionError in the log)."""
    deep = '{"username":' + "[" * 10_000 + "]" * 10_000 + "}"
    username = new_user(demo)
    for method, path, headers in (("POST", "/api/auth/login", {}), ("POST", "/api/auth/refresh", {}),
                                  ("POST", "/api/auth/logout", {}), ("POST", "/api/admin/users", admin(demo)),
                                  ("PUT", f"/api/admin/users/{username}", admin(demo))):
        r = httpx.request(method, f"{demo.url}{path}", content=deep, timeout=10,
                          headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_JSON", (path, r.text)


def test_single_user_mode_refuses_to_make_a_user_that_could_never_sign_in(demo: DemoStack, urls) -> None:
    key = f"sy_single_{uuid.uuid4().hex}"
    gateway = start_gateway(demo, urls, auth_mode="single-user", api_key=key)
    try:
        r = httpx.post(f"{gateway.url}/api/admin/users", headers=bearer(key), timeout=30,
                       json={"username": f"u{uuid.uuid4().hex[:10]}", "password": PASSWORD, "tenant_id": "admin"})
        issued = httpx.post(f"{gateway.url}/api/admin/tenants/admin/keys", headers=bearer(key), timeout=30,
                            json={"role": "member"})
    finally:
        stop_gateway(gateway)
    assert r.status_code == 409 and r.json()["error"]["code"] == "SINGLE_USER_MODE", r.text
    assert "single-user mode has one key" in r.json()["error"]["message"]
    assert issued.status_code == 409 and issued.json()["error"]["code"] == "SINGLE_USER_MODE", issued.text


def test_a_sign_in_body_not_sent_as_json_is_refused_unread(demo: DemoStack) -> None:
    """A `text/plain` POST needs no CORS preflight: any page a visitor opens could try passwords in their name and
    lock them out (the back-off is per username). A body must say it is JSON (415, no attempt counted)."""
    username = new_user(demo)
    for _ in range(8):
        refused = httpx.post(f"{demo.url}/api/auth/login", content=json.dumps(
            {"username": username, "password": "wrong-password-1"}), timeout=10,
            headers={"content-type": "text/plain", "origin": "https://evil.example"})
        assert refused.status_code == 415, refused.text
    assert login(demo.url, username).status_code == 200                # not locked out
    assert httpx.post(f"{demo.url}/api/auth/logout", timeout=10).status_code in (200, 401)   # no body: no type needed
