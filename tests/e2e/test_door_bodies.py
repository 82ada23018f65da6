"""End to end: what the doors take as a request body and what they refuse before anything is reserved or recorded.

Each test gets the hostile lab (tests/e2e/test_hostile.py): two simulators serving a model only the lab's tenants use.
A tenant with limits has its calls reserved and their bodies rewritten (the output ceiling), the path on which a body
the gateway did not read whole could fail after the call was accepted.
"""

from __future__ import annotations

import gzip
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from tests.e2e.test_demo import exactly_one_usage_row, usage_rows
from tests.e2e.test_hostile import Lab, counters
from tests.e2e.test_hostile import lab as lab  # noqa: F401  (the fixture)

DOORS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate", "/v1/messages"]


def door_body(lab: Lab, path: str, **fields: Any) -> dict[str, Any]:
    """A call's body on a door, streamed where the door streams (a stream without `include_usage` is rewritten)."""
    if path == "/v1/messages":
        body = {"model": lab.model, "max_tokens": 5, "messages": [{"role": "user", "content": "route me well"}]}
    else:
        body = lab.body(path)
    if "embed" in path:
        body["model"] = f"{lab.model}-embed"
    elif path.startswith("/v1/"):
        body["stream"] = True
    return {**body, **fields}


def error_of(path: str, reply: httpx.Response) -> tuple[str | None, str]:
    """(code, message) of an error in the door's shape; Ollama's names no code, Anthropic's names a type."""
    error = reply.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(error, str), reply.text
        return None, error
    if path == "/v1/messages":
        assert reply.json()["type"] == "error" and error["type"] == "invalid_request_error", reply.text
        return None, error["message"]
    assert set(error) == {"message", "type", "param", "code"}, reply.text
    return error["code"], error["message"]


async def refused_before_anything(lab: Lab, urls, tenant: str, request_ids: list[str]) -> None:
    """Nothing was reserved for the tenant, and none of the calls was recorded."""
    assert await counters(urls, tenant) == {}, "nothing was reserved, not even a request"
    sentinel = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=15) as client:
        ok = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(request_id=sentinel),
                               json=lab.body(max_tokens=5))
    assert ok.status_code == 200, ok.text
    await exactly_one_usage_row(lab.demo, sentinel)
    for request_id in request_ids:
        assert await usage_rows(lab.demo, request_id) == [], "a refused call records nothing"


# --- UTF-8 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOORS)
async def test_a_body_that_is_not_utf8_is_a_400_invalid_json_on_every_door(lab: Lab, urls, path: str) -> None:
    """A byte that is no UTF-8 in a key was a 500 with a traceback (the key check's decode, unwrapped); in a field
    the gateway does not read it went upstream as it was, or, with the body rewritten (a stream's usage, a ceiling),
    was a 500 after the call was accepted, with a usage event. JSON is UTF-8: refused as malformed, first."""
    tenant, key = await lab.tenant_with(daily_tokens=20_000, rpm=1000)
    written = msgspec.json.encode(door_body(lab, path))[:-1]
    request_ids = []
    async with httpx.AsyncClient(timeout=15) as client:
        for tail in (b', "\xff": 1}', b', "x_vendor": "caf\xe9"}', b', "x_vendor": {"\xc3\x28": ["\xed\xa0\x80"]}}'):
            request_id = uuid.uuid4().hex
            request_ids.append(request_id)
            reply = await client.post(f"{lab.demo.url}{path}", content=written + tail,
                                      headers={**lab.headers(key, request_id), "Content-Type": "application/json"})
            assert reply.status_code == 400, (tail, reply.text)
            code, message = error_of(path, reply)
            assert code in (None, "invalid_json") and "not UTF-8" in message, (tail, reply.text)
    await refused_before_anything(lab, urls, tenant, request_ids)


# --- content codings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOORS)
async def test_a_body_sent_with_a_content_coding_is_a_415_naming_it(lab: Lab, urls, path: str) -> None:
    """No route decodes a coded body: a gzip one was "Malformed JSON at byte 0", and a plain one labelled `br` was
    served as if the header were not there. Both are 415 naming the coding, in the door's shape; `identity` is
    the body as it is."""
    tenant, key = await lab.tenant_with(daily_tokens=20_000, rpm=1000)
    body = msgspec.json.encode(door_body(lab, path))
    request_ids = []
    async with httpx.AsyncClient(timeout=15) as client:
        for coding, content in (("gzip", gzip.compress(body)), ("br", body), ("gzip, identity", gzip.compress(body))):
            request_id = uuid.uuid4().hex
            request_ids.append(request_id)
            reply = await client.post(f"{lab.demo.url}{path}", content=content, headers={
                **lab.headers(key, request_id), "Content-Type": "application/json", "Content-Encoding": coding})
            assert reply.status_code == 415, (coding, reply.text)
            code, message = error_of(path, reply)
            assert code in (None, "unsupported_content_encoding") and f"'{coding}'" in message, (coding, reply.text)
            assert reply.headers["accept-encoding"] == "identity"
        await refused_before_anything(lab, urls, tenant, request_ids)
        plain = await client.post(f"{lab.demo.url}{path}", content=body, headers={
            **lab.headers(key), "Content-Type": "application/json", "Content-Encoding": "identity"})
        assert plain.status_code == 200, plain.text


# --- stream: null ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_stream_null_is_a_whole_answer_as_openai_reads_it(lab: Lab, urls, path: str) -> None:
    """OpenAI's `stream` is nullable, null meaning false; it was a 400 "Expected `bool`, got `null`". Now a whole
    answer, recorded as no stream, with a tenant's limits (the body rewritten) and without."""
    _, key = await lab.tenant_with(daily_tokens=20_000)
    async with httpx.AsyncClient(timeout=15) as client:
        for caller in (key, lab.member):
            request_id = uuid.uuid4().hex
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(caller, request_id),
                                      json=door_body(lab, path, stream=None))
            assert reply.status_code == 200, reply.text
            assert reply.headers["content-type"].startswith("application/json"), reply.text[:200]
            assert reply.json()["object"] == ("list" if "embed" in path else
                                              "chat.completion" if "chat" in path else "text_completion")
            event = await exactly_one_usage_row(lab.demo, request_id)
            assert (event["stream"], event["outcome"], event["status"]) == (False, "ok", 200), event


# --- content parts --------------------------------------------------------------------------------------------------


async def test_a_content_part_of_a_type_openai_does_not_have_is_a_400_naming_it(lab: Lab, urls) -> None:
    """`bogus` or `Text` was held at the model's whole context as a part the gateway could not count, and under a
    limit answered 402 "Quota exceeded"; OpenAI refuses it, naming the part (vLLM's media types are taken, held at
    the whole context as audio and files are)."""
    tenant, key = await lab.tenant_with(daily_tokens=5000)
    text = {"type": "text", "text": "what is announced on platform nine"}
    request_ids = []
    async with httpx.AsyncClient(timeout=15) as client:
        for kind in ("bogus", "Text", "image", ""):
            request_id = uuid.uuid4().hex
            request_ids.append(request_id)
            parts = [text, {"type": kind, "text": "and on platform ten"}]
            reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key, request_id),
                                      json=lab.body(messages=[{"role": "user", "content": parts}]))
            assert reply.status_code == 400, (kind, reply.text)
            error = reply.json()["error"]
            assert (error["param"], error["code"]) == ("messages[0].content[1].type", "invalid_value"), error
    await refused_before_anything(lab, urls, tenant, request_ids)


async def test_a_402_for_a_part_held_at_the_whole_context_says_so(lab: Lab) -> None:
    """Audio is held at the model's context (8,192 here): a tenant with 5,000 tokens left was told "Quota exceeded"
    with numbers showing room left; the message now says why the call did not fit."""
    _, key = await lab.tenant_with(daily_tokens=5000)
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    parts = [{"type": "text", "text": "what is announced here"}, audio]
    async with httpx.AsyncClient(timeout=15) as client:
        reply = await client.post(f"{lab.demo.url}/v1/chat/completions", headers=lab.headers(key),
                                  json=lab.body(messages=[{"role": "user", "content": parts}], max_tokens=5))
    assert reply.status_code == 402, reply.text
    error = reply.json()["error"]
    assert error["limit"] == 5000 and error["used"] < 5000, error        # room left, which the call did not fit
    assert error["message"] == ("Quota exceeded: the prompt holds a content part the gateway cannot count "
                                "(messages[0].content[1], input_audio), held as the model's whole context "
                                "(8192 tokens)"), error


# --- fields the gateway passes on unread ----------------------------------------------------------------------------

RIGHT_TYPES = {
    "/v1/chat/completions": {"logprobs": False, "parallel_tool_calls": True, "store": False, "tool_choice": "none",
                             "response_format": {"type": "text"}, "metadata": {"team": "yard"},
                             "modalities": ["text"], "stop": ["a", "b", "c", "d"], "user": "u-1"},
    "/v1/completions": {"stop": "\n\n", "echo": False, "n": 2, "user": "u-1"},
    "/v1/embeddings": {"user": "u-1"},
}


async def test_the_fields_passed_on_unread_are_served_when_of_their_types(lab: Lab) -> None:
    """Those of the wrong type are 400s naming them (tests/e2e/test_hostile.py, HOSTILE); these are not."""
    _, key = await lab.tenant_with(daily_tokens=20_000)
    async with httpx.AsyncClient(timeout=15) as client:
        for path, fields in RIGHT_TYPES.items():
            reply = await client.post(f"{lab.demo.url}{path}", headers=lab.headers(key),
                                      json=door_body(lab, path, stream=False, max_tokens=5, **fields))
            assert reply.status_code == 200, (path, reply.text)
