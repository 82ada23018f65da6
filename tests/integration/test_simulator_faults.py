"""Injected failures, latency and pacing of the simulator, seen by a real HTTP client."""

import asyncio
import time

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator

from tests.integration.conftest import CHAT


async def wait_until(condition, timeout_s: float = 3.0) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def test_http_500_failures_use_each_apis_error_shape(client, sim):
    sim.configure(failure_kind="http_500", failure_rate=1.0)
    openai_style = await client.post("/v1/chat/completions", json=CHAT)
    assert openai_style.status_code == 500
    assert openai_style.json()["error"]["type"] == "server_error"
    ollama_style = await client.post("/api/chat", json=CHAT)
    assert ollama_style.status_code == 500
    assert isinstance(ollama_style.json()["error"], str)
    assert sim.stats.failures == {"http_500": 2}


async def test_http_429_failures_carry_retry_after(client, sim):
    sim.configure(failure_kind="http_429", failure_rate=1.0, retry_after_s=3)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "3"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"


async def test_failure_choice_repeats_for_a_seed_after_reset(client, sim):
    sim.configure(failure_kind="http_500", failure_rate=0.5, seed=7)
    first = [(await client.get("/api/version")).status_code for _ in range(30)]
    sim.reset()
    second = [(await client.get("/api/version")).status_code for _ in range(30)]
    assert first == second
    assert {200, 500} == set(first)
    assert sim.stats.failures["http_500"] == first.count(500)


async def test_control_routes_ignore_failure_knobs(client, sim):
    sim.configure(failure_kind="http_500", failure_rate=1.0, latency_ms=5000)
    assert (await client.get("/_sim/stats")).status_code == 200
    assert (await client.get("/_sim/config")).json()["failure_rate"] == 1.0


async def test_refuse_closes_listener_and_open_connections_until_restored(client, sim):
    assert (await client.get("/api/version")).status_code == 200
    assert sim.stats.connections == 1
    sim.configure(failure_kind="refuse", failure_rate=1.0)
    await wait_until(lambda: sim.stats.connections == 0)
    with pytest.raises(httpx.ConnectError):
        await client.get("/api/version")
    sim.configure(failure_rate=0.0)
    assert (await client.get("/api/version")).status_code == 200


async def test_simulator_started_refusing_refuses_from_the_start():
    async with Simulator(SimConfig(failure_kind="refuse", failure_rate=1.0)) as sim:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/api/version")
            sim.configure(failure_kind="http_500", failure_rate=0.0)
            assert (await client.get("/api/version")).status_code == 200


async def test_hang_never_answers_until_the_client_gives_up(sim):
    sim.configure(failure_kind="hang", failure_rate=1.0)
    async with httpx.AsyncClient(base_url=sim.url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=CHAT)
    assert sim.stats.failures == {"hang": 1}
    await wait_until(lambda: sim.stats.connections == 0)


async def test_cut_stream_stops_midway_without_done(client, sim):
    sim.configure(failure_kind="cut", failure_rate=1.0)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        request = {**CHAT, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=request) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line:
                    received.append(line)
    assert 0 < len(received) < 9  # role, 6 tokens, finish and [DONE] would be 9
    assert "data: [DONE]" not in received


async def test_cut_ollama_stream_stops_before_done(client, sim):
    sim.configure(failure_kind="cut", failure_rate=1.0, token_interval_ms=5)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/api/chat", json=CHAT) as resp:
            async for line in resp.aiter_lines():
                received.append(line)
    assert received and all('"done":false' in line for line in received if line)


async def test_cut_non_stream_reply_ends_mid_body(client, sim):
    sim.configure(failure_kind="cut", failure_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/v1/chat/completions", json=CHAT)


async def test_latency_delays_the_reply(client, sim):
    sim.configure(latency_ms=150)
    started = time.monotonic()
    assert (await client.post("/api/chat", json={**CHAT, "stream": False})).status_code == 200
    assert time.monotonic() - started >= 0.15


async def test_token_interval_paces_streamed_chunks(client, sim):
    sim.configure(tokens=4, token_interval_ms=30)
    arrivals = []
    request = {**CHAT, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=request) as resp:
        async for line in resp.aiter_lines():
            if line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 7  # role, 4 tokens, finish, [DONE]
    assert arrivals[-1] - arrivals[0] >= 0.15  # six gaps of 30 ms


async def test_runtime_config_change_applies_to_the_next_request(client, sim):
    assert (await client.post("/v1/chat/completions", json=CHAT)).json()["usage"][
        "completion_tokens"
    ] == 6
    sim.configure(tokens=2)
    assert (await client.post("/v1/chat/completions", json=CHAT)).json()["usage"][
        "completion_tokens"
    ] == 2


async def test_failure_paths_limit_failures_to_the_named_routes(sim, client):
    sim.configure(failure_kind="http_500", failure_rate=1.0, failure_paths=("/v1/chat/completions",))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 500
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/api/tags")).status_code == 200
