"""Fixtures for the integration tests: a simulator on a free port and an HTTP client for it; metering's replay and
log feed in the test's process (tests/integration/logharness.py)."""

import httpx
import pytest

from switchyard_gateway.simulator import SimConfig, Simulator
from tests.integration.logharness import metering, nats_client  # noqa: F401 — fixtures of the modules here

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hello there yard"}]}


@pytest.fixture
async def sim():
    async with Simulator(SimConfig(tokens=6)) as sim:
        yield sim


@pytest.fixture
async def client(sim):
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as client:
        yield client
