"""An admin write whose event would not fit one NATS message is refused with 413 in the admin shape, naming the
server's max_payload, and nothing is recorded: the registry's outbox never meets a row it cannot publish."""

from __future__ import annotations

import msgspec
import pytest

from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.events import EndpointRegistered
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import StackUrls
from tests.conftest import DemoStack, logged
from tests.e2e.test_admin_registry import api, provider, tag  # noqa: F401 — fixtures

NAME = 250                          # characters of each model name (the last one: up to twice that)


def endpoint_of_size(endpoint_id: str, provider_id: str, command_bytes: int) -> tuple[dict, int, int]:
    """An endpoint body whose create command (as the gateway sends it) is `command_bytes` long; with the command's
    and its event's sizes, the event's as one message with its message id."""
    body = {"endpoint_id": endpoint_id, "provider_id": provider_id, "base_url": "http://127.0.0.1:9", "models": []}

    def command(models: list[str]) -> bytes:
        return encode(msgspec.convert({**body, "models": models, "mode": "create"}, m.RegisterEndpoint))

    full = (command_bytes - len(command([]))) // (NAME + 3) - 1     # a name costs its quotes and a comma
    models = [f"{i:06d}".ljust(NAME, "x") for i in range(full)]
    models.append("last" + "x" * (command_bytes - len(command([*models, "last"]))))     # the rest, to the byte
    sent = command(models)
    assert len(sent) == command_bytes
    event = EndpointRegistered(**{k: v for k, v in msgspec.json.decode(sent).items() if k not in ("command", "mode", "if_match")})
    return {**body, "models": models}, len(sent), natsio.message_size(
        encode(event), {subjects.MSG_ID_HEADER: str(event.event_id)})


@pytest.fixture
async def max_payload(urls: StackUrls) -> int:
    nc = await natsio.connect(urls.nats_url, "max-payload", 10)
    try:
        return nc.max_payload
    finally:
        await nc.close()


@pytest.mark.parametrize("short_of_limit", [100, -1000], ids=["event-over-max-payload", "request-over-max-payload"])
async def test_an_endpoint_too_large_for_one_message_is_refused_with_413_and_not_recorded(
        demo: DemoStack, tag: str, provider: str, max_payload: int, short_of_limit: int) -> None:
    endpoint_id = f"e-{tag}"
    body, command_bytes, event_message = endpoint_of_size(endpoint_id, provider, max_payload - short_of_limit)
    assert event_message > max_payload              # the outbox could never publish it
    if short_of_limit > 0:
        assert command_bytes <= max_payload         # but the gateway can send the command to the registry

    refused = await api(demo, "POST", "/endpoints", body)
    assert refused.status_code == 413, refused.text[:500]
    error = refused.json()["error"]
    assert error["code"] == "PAYLOAD_TOO_LARGE" and str(max_payload) in error["message"]
    assert ("event this change would record" in error["message"]) == (short_of_limit > 0), error   # whose refusal
    assert (await api(demo, "GET", f"/endpoints/{endpoint_id}")).status_code == 404
    assert await logged(demo.database_url, subjects.ENDPOINT_REGISTERED, "payload->>'endpoint_id' = $2",
                        endpoint_id) == []

    # the registry goes on: the same endpoint with fewer models is recorded and published
    body["models"] = body["models"][:3]
    created = await api(demo, "POST", "/endpoints", body)
    assert created.status_code == 201, created.text
    assert created.json()["resource"]["models"] == body["models"]
