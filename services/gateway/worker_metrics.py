"""One scrape for every worker of a gateway: the worker a scrape reaches asks its siblings for their samples over
NATS (`gateway.metrics.v1`) and adds them to its own, so the hot path writes its metrics as before (per process,
no shared memory).

Counters, histograms and summaries are summed sample by sample (their `_created` times: the earliest); so are
the gauges in SUMMED (calls in flight, queues); of the gauges in LONGEST (how long something has waited), the
largest is kept. Every other gauge is this worker's own: they describe state each
worker follows alike (breakers, models) or this process (its memory). A sibling that does not answer within
ASK_S is left out of that scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.messages import MetricFamily, MetricSample, WorkerMetricsAsk, WorkerMetricsReply

ASK_S = 0.5                    # how long a scrape waits for the sibling workers' samples
SUMMED = frozenset({"switchyard_inflight_calls", "active_embedding_requests", "switchyard_usage_events_pending",
                    "switchyard_ws_connections", "process_cpu_seconds", "process_resident_memory_bytes"})
LONGEST = frozenset({"switchyard_usage_waiting_seconds"})
ADDED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

_ask = msgspec.json.Decoder(WorkerMetricsAsk).decode
_reply = msgspec.json.Decoder(WorkerMetricsReply).decode
_encode = msgspec.json.Encoder().encode


def own_families() -> list[MetricFamily]:
    """This process's samples, as a sibling is sent them."""
    return [MetricFamily(m.name, m.type, m.documentation, m.unit,
                         [MetricSample(s.name, s.labels, s.value) for s in m.samples]) for m in REGISTRY.collect()]


def merge(own: list[MetricFamily], siblings: list[list[MetricFamily]]) -> list[Metric]:
    """Own families, with the siblings' samples added where they add up."""
    out: list[Metric] = []
    theirs: dict[str, list[list[MetricSample]]] = {}
    for families in siblings:
        for family in families:
            theirs.setdefault(family.name, []).append(family.samples)
    for family in own:
        name = family.name
        metric = Metric(name, family.documentation, family.type, family.unit)
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        labels: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, str]] = {}
        adds = family.type in ADDED_TYPES or name in SUMMED or name in LONGEST
        for group in [family.samples, *(theirs.get(name, []) if adds else [])]:
            for sample in group:
                sample_name, sample_labels, value = sample.name, sample.labels, sample.value
                key = (sample_name, tuple(sorted(sample_labels.items())))
                if key not in values:
                    values[key], labels[key] = value, sample_labels
                elif sample_name.endswith("_created"):
                    values[key] = min(values[key], value)
                elif name in LONGEST:
                    values[key] = max(values[key], value)
                else:
                    values[key] += value
        for (sample_name, _), value in values.items():
            metric.add_sample(sample_name, labels[(sample_name, _)], value)
        out.append(metric)
    return out


class WorkerMetrics:
    """Answers sibling workers' requests for samples; before a scrape, gathers theirs (`gather`)."""

    def __init__(self, nc: NATS, gateway: str, instance: str, workers: int) -> None:
        self.nc, self.gateway, self.instance, self.workers = nc, gateway, instance, workers
        self.siblings: list[list[MetricFamily]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.GATEWAY_METRICS, cb=self._answer)

    async def _answer(self, msg: Any) -> None:
        try:
            ask = _ask(msg.data)
        except msgspec.MsgspecError:
            return
        if ask.gateway == self.gateway and ask.asker != self.instance and msg.reply:
            await self.nc.publish(msg.reply, _encode(WorkerMetricsReply(self.instance, own_families())))

    async def gather(self) -> None:
        """Ask every sibling for its samples; keep what arrives within ASK_S."""
        got: list[list[MetricFamily]] = []
        enough = asyncio.Event()

        async def on_reply(msg: Any) -> None:
            with contextlib.suppress(msgspec.MsgspecError):
                got.append(_reply(msg.data).families)
            if len(got) >= self.workers - 1:
                enough.set()

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=on_reply)
        try:
            await self.nc.publish(subjects.GATEWAY_METRICS, _encode(WorkerMetricsAsk(self.gateway, self.instance)),
                                  reply=inbox)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(enough.wait(), ASK_S)
        finally:
            await sub.unsubscribe()
        self.siblings = got

    def collect(self) -> Iterator[Metric]:
        siblings, self.siblings = self.siblings, []
        yield from merge(own_families(), siblings)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
