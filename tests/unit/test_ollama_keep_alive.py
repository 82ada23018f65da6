"""A caller's `keep_alive` on the Ollama door: read as Ollama reads it, and sent to a shared server held to bounds."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from switchyard_gateway.quotas.tokens import TokenEstimator
from switchyard_gateway.services.gateway.edge.errors import BadRequest
from switchyard_gateway.services.gateway.translate.asks import read_request
from switchyard_gateway.services.gateway.translate.plans import ollama_plan

KEEP_ALIVE_FLOOR_S, KEEP_ALIVE_CEILING_S = 300, 3600      # the bounds the README gives

APIS = {"ollama.chat": {"messages": [{"role": "user", "content": "hi"}]}, "ollama.generate": {"prompt": "hi"},
        "ollama.embed": {"input": "hi"}, "ollama.embeddings": {"prompt": "hi"}}


def sent(api: str, keep_alive: Any) -> tuple[bytes, bytes]:
    """(the client's body, the body the native plan sends an Ollama endpoint for it), read and checked first."""
    body = msgspec.json.encode({"model": "m", **APIS[api], "keep_alive": keep_alive})
    read_request(api, body).ask(4096, TokenEstimator())
    return body, ollama_plan(api, "ollama").request(body, "m")[1]


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize(("asked", "held"), [
    (0, KEEP_ALIVE_FLOOR_S), ("0s", KEEP_ALIVE_FLOOR_S), ("0h0m", KEEP_ALIVE_FLOOR_S), (0.0, KEEP_ALIVE_FLOOR_S),
    (1, KEEP_ALIVE_FLOOR_S), ("30s", KEEP_ALIVE_FLOOR_S), ("1ms", KEEP_ALIVE_FLOOR_S),
    (-1, KEEP_ALIVE_CEILING_S), ("-1m", KEEP_ALIVE_CEILING_S), (-0.5, KEEP_ALIVE_CEILING_S),
    ("24h", KEEP_ALIVE_CEILING_S), (10**12, KEEP_ALIVE_CEILING_S), (1e300, KEEP_ALIVE_CEILING_S),
])
def test_a_keep_alive_past_the_bounds_reaches_a_shared_ollama_held_to_them(api: str, asked: Any, held: int) -> None:
    """`keep_alive: 0` on an ordinary call unloaded a model other tenants were using, `-1` pinned it for ever."""
    _, upstream = sent(api, asked)
    assert msgspec.json.decode(upstream)["keep_alive"] == held


@pytest.mark.parametrize("asked", ["5m", "45m", "1h", 300, 3600, 1800.5, ".5h", None])
def test_a_keep_alive_within_the_bounds_goes_on_as_the_client_wrote_it(asked: Any) -> None:
    body, upstream = sent("ollama.chat", asked)
    assert upstream is body


@pytest.mark.parametrize("api", list(APIS))
@pytest.mark.parametrize("asked", ["forever", "5x", "-", "300", "", "5 m", "1h-5m", "m", True, {}, [1]])
def test_a_keep_alive_ollama_refuses_is_a_400_naming_it(api: str, asked: Any) -> None:
    """"forever", "-" and "5x" were sent on: Ollama answered 400 after the call's quota was held."""
    with pytest.raises(BadRequest) as refused:
        sent(api, asked)
    assert refused.value.param == "keep_alive" and "keep_alive" in str(refused.value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), ("1h30m", 5400), ("1.5h", 5400), ("300ms", 0.3), ("2m3s", 123), ("-1m", -60), ("+10s", 10),
    ("1us", 1e-6), ("1µs", 1e-6), (".5s", 0.5), ("5.s", 5),
])
def test_durations_read_as_gos(text: str, seconds: float) -> None:
    from switchyard_gateway.services.gateway.translate.keep_alive import keep_alive_seconds

    assert keep_alive_seconds(text) == pytest.approx(seconds)
