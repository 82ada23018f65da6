"""Metering's log feed and replay, run in the test's process on a NATS server of the module's own (`own_nats`),
with the usage ingest when a test publishes usage the way gateways do."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from datetime import UTC, datetime

import pytest

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.events import Ingest, LogFeed, LogNotices
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.services.metering import door, history
from switchyard_gateway.services.metering.projections import PROJECTIONS

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def usage(i: int, tenant: str, at: datetime = T0) -> UsageRecorded:
    return UsageRecorded(request_id=f"r{i}", tenant_id=tenant, key_id="k", model="llama3.2", api="openai.chat",
                         outcome="ok", status=200, input_tokens=i, output_tokens=1, occurred_at=at)


class Metering:
    """The replay handler and the log's feed as metering runs them, in this process."""

    def __init__(self, nc, pool, database_url: str) -> None:
        self.nc, self.pool = nc, pool
        self.notices = LogNotices(database_url)
        self.feed = LogFeed(pool, nc, self.notices)
        self.tasks: list[asyncio.Task] = []

    async def start(self, ingest: bool = False) -> None:
        await natsio.ensure_streams(self.nc)
        js = self.nc.jetstream()
        for stream in (subjects.STREAM_LOG, subjects.STREAM_USAGE, subjects.STREAM_DEADLETTER):
            await js.purge_stream(stream)            # one log per test, one set of streams per module
        pages = history.History(self.pool, self.nc)
        handlers = {**dict.fromkeys(history.SUBJECTS, functools.partial(history.on_replay, pages)),
                    door.SUBJECT: functools.partial(door.on_request, pages)}
        self.service = await natsio.serve(self.nc, "metering", {}, by_subject=handlers,
                                          at_once={door.SUBJECT: door.AT_ONCE},
                                          reply_rules={door.SUBJECT: door.reply_rule},
                                          shares={door.SUBJECT: (door.user_of, door.PER_USER)})
        self.tasks = [asyncio.ensure_future(self.notices.run()), asyncio.ensure_future(self.feed.run())]
        if ingest:
            with contextlib.suppress(Exception):    # a consumer left by an earlier test of the module
                await js.delete_consumer(subjects.STREAM_USAGE, subjects.CONSUMER_METERING)
            self.ingest = Ingest(self.nc, self.pool, subjects.STREAM_USAGE, subjects.CONSUMER_METERING,
                                 list(PROJECTIONS.values()), linger_s=0.02)
            self.tasks.append(asyncio.ensure_future(self.ingest.run()))
        await asyncio.wait_for(self.notices.listening.wait(), 10)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.service.stop()  # type: ignore[attr-defined]

    async def append(self, events) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            appended = await eventlog.append(conn, list(events))
        return appended[-1][0]


async def log_messages(nc) -> list:
    """Every message the LOG stream holds, oldest first."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_LOG)
    return [await js.get_msg(subjects.STREAM_LOG, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]


@pytest.fixture
async def nats_client(own_nats: str):
    nc = await natsio.connect(own_nats, "replay-tests", 10)
    yield nc
    await nc.close()


@pytest.fixture
async def metering(nats_client, pool, database_url: str):
    running = Metering(nats_client, pool, database_url)
    await running.start()
    yield running
    await running.stop()


