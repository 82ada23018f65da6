"""The simulator's /_sim/ control plane, on the main port and on a separate control port."""

import asyncio
import time

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def sim():
    async with Simulator() as sim:
        yield sim


@pytest.fixture
async def client(sim):
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as client:
        yield client


async def refused(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as fresh:
            await fresh.get(url + "/api/version")
    except httpx.ConnectError:
        return True
    return False


async def test_post_config_changes_knobs_and_returns_the_full_config(client):
    resp = await client.post("/_sim/config", json={"tokens": 2, "models": ["m1"]})
    assert resp.status_code == 200
    full = resp.json()
    assert (full["tokens"], full["models"], full["embedding_dims"]) == (2, ["m1"], 768)
    assert (await client.get("/_sim/config")).json() == full
    reply = await client.post("/v1/chat/completions", json={**CHAT, "model": "m1"})
    assert reply.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body", [b'{"tokens": -1}', b'{"nope": 1}', b"{bad json", b"[1]"])
async def test_post_config_rejects_bad_changes_and_keeps_the_config(client, sim, body):
    resp = await client.post("/_sim/config", content=body)
    assert resp.status_code == 400
    assert "error" in resp.json()
    assert sim.config == SimConfig()


async def test_stats_count_upstream_requests_by_path_and_reset_zeroes_them(client):
    await client.post("/v1/chat/completions", json=CHAT)
    await client.post("/v1/chat/completions", json=CHAT)
    await client.get("/api/tags")
    stats = (await client.get("/_sim/stats")).json()
    assert stats["requests"] == {"/v1/chat/completions": 2, "/api/tags": 1}
    assert stats["total"] == 3
    assert stats["connections"] == 1
    reset = (await client.post("/_sim/reset")).json()
    assert (reset["requests"], reset["total"]) == ({}, 0)


async def test_refuse_over_the_main_port_is_answered_before_it_closes(client, sim):
    resp = await client.post("/_sim/config", json={"failure_kind": "refuse", "failure_rate": 1})
    assert resp.json()["failure_kind"] == "refuse"
    assert await refused(sim.url)
    sim.configure(failure_rate=0)
    assert not await refused(sim.url)


async def test_control_port_restores_a_refusing_main_port():
    sim = Simulator()
    await sim.start(control_port=0)
    try:
        async with httpx.AsyncClient(base_url=sim.control_url, timeout=5) as control:
            await control.post("/_sim/config", json={"failure_kind": "refuse", "failure_rate": 1})
            deadline = time.monotonic() + 3
            while not await refused(sim.url):
                assert time.monotonic() < deadline, "main port still listening"
                await asyncio.sleep(0.01)
            await control.post("/_sim/config", json={"failure_rate": 0})
            assert not await refused(sim.url)
            assert (await control.get("/api/tags")).status_code == 404  # control routes only
    finally:
        await sim.stop()


@pytest.mark.parametrize("knob", ["latency_ms", "token_interval_ms", "end_delay_ms", "retry_after_s"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_delay_that_is_no_number_of_seconds_is_refused(knob: str, value: float) -> None:
    """A NaN delay was taken as none and an infinite one hung every call (a test's `Simulator(SimConfig(...))`)."""
    from switchyard_gateway.simulator.config import ConfigError

    with pytest.raises(ConfigError, match="finite and >= 0"):
        SimConfig(**{knob: value})
