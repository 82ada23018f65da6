"""The gateway's usage publisher on a NATS server of this module's own whose JetStream takes nothing at first: what
it could not publish waits in the journal and is tried again with backoff, then goes out once JetStream takes it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import structlog

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.kit import natsio
from switchyard_gateway.services.gateway.api.health import usage_health
from switchyard_gateway.services.gateway.pipeline import usage
from switchyard_gateway.services.gateway.pipeline.journal import Journal
from switchyard_gateway.services.gateway.pipeline.usage import UsagePublisher
from switchyard_gateway.services.gateway.settings import Settings
from tests.conftest import wait_for


async def test_usage_jetstream_refuses_is_tried_again_with_backoff_then_published(
        nats_client, tmp_path: Path, monkeypatch) -> None:
    """With JetStream out of quorum a gateway tried one parked event again as fast as the refusals came back:
    28,619 tries and twice as many log lines in 17 s."""
    # a logger of its own: a service run earlier in this process may have cached the module's, unseen by capture_logs
    monkeypatch.setattr(usage, "log", structlog.get_logger())
    js = nats_client.jetstream()
    await natsio.ensure_streams(nats_client)
    await js.delete_stream(subjects.STREAM_USAGE)                  # nothing takes usage events now
    publisher = UsagePublisher(nats_client, Journal(tmp_path, "gw-republish"))
    await publisher.open()
    running = asyncio.ensure_future(publisher.run())
    try:
        with structlog.testing.capture_logs() as logs:
            publisher.record(UsageRecorded(request_id="r1", tenant_id="acme", key_id="k", model="m",
                                           api="openai.chat", outcome="ok", status=200, input_tokens=3,
                                           output_tokens=4))
            await asyncio.sleep(4.0)
        tries = [line for line in logs if line["event"] == "usage.republishing"]
        assert publisher.pending == 1 and 1 <= len(tries) <= 4, len(tries)     # 1 s, then 2 s, then 4 s apart
        # /health judges it (it only showed the count): parked longer than the stall setting, the gateway is not
        # healthy, and says why
        deps = SimpleNamespace(usage=publisher, settings=Settings(usage_stall_s=2.0))
        stalled = usage_health(deps)
        assert publisher.waiting_s > 3.0 and stalled["status"] == "error" and "JetStream" in stalled["detail"]
        assert stalled["usage_events_parked"] == 1 and stalled["usage_waiting_s"] > 3.0
        assert "status" not in usage_health(SimpleNamespace(usage=publisher, settings=Settings(usage_stall_s=60.0)))
        await natsio.ensure_streams(nats_client)                   # JetStream takes them again
        await wait_for(lambda: publisher.pending == 0, timeout_s=20, what="the parked event published")
        assert (await js.stream_info(subjects.STREAM_USAGE)).state.messages == 1
        assert publisher.waiting_s == 0.0 and "status" not in usage_health(deps)
    finally:
        running.cancel()
