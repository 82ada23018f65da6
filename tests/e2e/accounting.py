"""Load that mixes streamed and plain chat calls, and the books it is held to: usage events and quota holds per call.

`MixedLoad` remembers what each call saw by its request id (answered in full, cut after its status
arrived, or no answer at all); `usage_by_request` reads the log's usage events per request id;
`held` reads which of those calls still hold quota in Valkey. A fault test kills something under
the load and then asks `check_books`: one event per call that got a status, none twice, none
for a call never sent, and `interrupted` only for calls that did not finish.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from switchyard_gateway.quotas.periods import Keys, key_prefix
from switchyard_gateway.resp import Valkey

DONE, CUT, UNANSWERED = "done", "cut", "unanswered"


@dataclass
class MixedLoad:
    """Chat calls from `workers` clients until stopped, every other worker streaming; what each call saw."""

    url: str
    key: str
    prefix: str
    workers: int = 12
    max_tokens: int = 16
    seen: dict[str, str] = field(default_factory=dict)      # request id -> DONE, CUT, UNANSWERED or "http_<status>"
    sent_at: dict[str, float] = field(default_factory=dict)  # request id -> monotonic time it was sent
    streaming: set[str] = field(default_factory=set)        # request ids of streams whose status arrived, not done
    running: bool = True
    sent: int = 0

    @property
    def answered(self) -> int:
        return sum(1 for outcome in self.seen.values() if outcome == DONE)

    def count(self) -> collections.Counter[str]:
        return collections.Counter(self.seen.values())

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
            await asyncio.gather(*(self._worker(client, stream=number % 2 == 0) for number in range(self.workers)))

    async def _worker(self, client: aiohttp.ClientSession, *, stream: bool) -> None:
        body = json.dumps({"model": "llama3.2", "stream": stream, "max_tokens": self.max_tokens,
                           "messages": [{"role": "user", "content": "keep counting"}]})
        while self.running:
            self.sent += 1
            request_id = f"{self.prefix}-{self.sent}"
            self.seen[request_id] = UNANSWERED
            self.sent_at[request_id] = time.monotonic()
            try:
                async with client.post(f"{self.url}/v1/chat/completions", data=body, headers={
                        "Authorization": f"Bearer {self.key}", "X-Request-Id": request_id,
                        "Content-Type": "application/json"}) as reply:
                    self.seen[request_id] = CUT if reply.status == 200 else f"http_{reply.status}"
                    if stream:
                        self.streaming.add(request_id)
                    await reply.read()
                    if reply.status == 200:
                        self.seen[request_id] = DONE
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await asyncio.sleep(0.05)      # the gateway is down: knock again shortly, not in a busy loop
            finally:
                self.streaming.discard(request_id)


async def usage_by_request(database_url: str, prefix: str) -> dict[str, list[str]]:
    """Request id -> the outcomes of the usage events the log holds for it, for the calls of one load."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT payload->>'request_id' AS id, payload->>'outcome' AS outcome FROM events"
                                " WHERE type = 'usage.recorded.v2' AND payload->>'request_id' LIKE $1", f"{prefix}-%")
    finally:
        await conn.close()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row["id"], []).append(row["outcome"])
    return found


async def held(redis_url: str, database_url: str, prefix: str) -> list[str]:
    """The request ids of one load's calls that still hold quota (their reservation not settled; a hold is named
    `<request id>/<usage event id>`)."""
    valkey = Valkey(redis_url)
    try:
        holders = await valkey.call("HKEYS", Keys(key_prefix("", database_url)).hold_data)
    finally:
        await valkey.close()
    names = (name.decode().rpartition("/")[0] for name in holders)
    return [name for name in names if name.startswith(f"{prefix}-")]


@dataclass
class Books:
    """A load's calls against the log: what was sent and seen, what was recorded."""

    seen: dict[str, str]
    usage: dict[str, list[str]]

    @property
    def with_status(self) -> set[str]:
        return {rid for rid, outcome in self.seen.items() if outcome != UNANSWERED}

    @property
    def lost(self) -> list[str]:
        return sorted(rid for rid in self.with_status if rid not in self.usage)

    @property
    def duplicated(self) -> list[str]:
        return sorted(rid for rid, outcomes in self.usage.items() if len(outcomes) > 1)

    @property
    def unknown(self) -> list[str]:
        return sorted(rid for rid in self.usage if rid not in self.seen)

    @property
    def interrupted(self) -> list[str]:
        return sorted(rid for rid, outcomes in self.usage.items() if "interrupted" in outcomes)

    def check(self) -> None:
        assert self.lost == [], f"calls that got a status and have no usage event: {self.lost[:10]}"
        assert self.duplicated == [], f"calls with more than one usage event: {self.duplicated[:10]}"
        assert self.unknown == [], f"usage events of calls never sent: {self.unknown[:10]}"
        finished_fine = [rid for rid in self.interrupted if self.seen[rid] == DONE]
        assert finished_fine == [], f"calls answered in full and recorded as interrupted: {finished_fine[:10]}"
