"""Pure folds of usage events: totals per key, a minute and a day series.

A batch is first reduced to *facts*: usage grouped by (minute, tenant, endpoint,
model, failed, estimated), with other events (price changes) kept in place so
that order still matters where it must. Every usage projection folds facts, so a
million events cost one pass of per-event work, shared by all of them. Adding
facts is associative: any batching gives the same totals, which is what lets a
rebuild equal the live view.

A rebuild decodes a narrow view of each usage event (`UsageView`); the live path
folds whole `UsageRecorded` events, which have the same fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import USAGE_RECORDED_V1
from switchyard_gateway.contracts.events import UsageRecorded


class UsageView(msgspec.Struct, gc=False):
    """The fields of `usage.recorded.v2` (and v1, the same fields) the usage projections fold; a rebuild decodes
    only these."""

    tenant_id: str
    model: str
    outcome: str
    occurred_at: str                # as written: parsing it is left to `minute_of`, which caches per minute
    endpoint_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False


_view = msgspec.json.Decoder(UsageView).decode
DECODERS: dict[str, Callable[[Any], Any]] = {subjects.USAGE_RECORDED: _view, USAGE_RECORDED_V1: _view}
# Usage events are only summed: a rebuild may read them by payload alone, in any order between other events.
BULK = frozenset({subjects.USAGE_RECORDED})
USAGE_TYPES = (UsageRecorded, UsageView)

FactKey = tuple[int, str, str, str, bool, bool]   # (minute as epoch seconds, tenant, endpoint, model, failed, estimated)
Facts = dict[FactKey, list[int]]                   # -> [input tokens, output tokens, calls, cached input tokens]
Segment = Facts | Any                              # a run of usage facts, or one other event, in log order


def usage_facts(events: Iterable[Any]) -> list[Segment]:
    """Group usage events into facts; any other event ends the current run and is kept as it is."""
    return _facts((None, event) for event in events)


def _facts(batch: Iterable[tuple[Any, Any]]) -> list[Segment]:
    segments: list[Segment] = []
    facts: Facts = {}
    minutes = _MINUTES
    for _, event in batch:
        kind = type(event)
        if kind is UsageView:
            at = event.occurred_at
            minute = minutes.get(at[:16]) if at[-1] == "Z" else None
            if minute is None:
                minute = minute_of(at)
        elif kind is UsageRecorded:
            second = int(event.occurred_at.timestamp())
            minute = second - second % 60
        else:
            if facts:
                segments.append(facts)
                facts = {}
            segments.append(event)
            continue
        key = (minute, event.tenant_id, event.endpoint_id, event.model, event.outcome != "ok", event.estimated)
        fact = facts.get(key)
        if fact is None:
            facts[key] = [event.input_tokens, event.output_tokens, 1, event.cached_tokens]
        else:
            fact[0] += event.input_tokens
            fact[1] += event.output_tokens
            fact[2] += 1
            fact[3] += event.cached_tokens
    if facts:
        segments.append(facts)
    return segments


_MINUTES: dict[str, int] = {}     # "2026-11-22T13:48" (UTC) -> that minute as epoch seconds


def minute_of(at: str) -> int:
    """The UTC minute an ISO-8601 instant falls in, as epoch seconds (UTC instants are cached per minute)."""
    second = int(datetime.fromisoformat(at).timestamp())
    minute = second - second % 60
    if at[-1] == "Z":
        if len(_MINUTES) > 100_000:
            _MINUTES.clear()
        _MINUTES[at[:16]] = minute
    return minute


_last: list[Any] = [None, None]


def facts_of(batch: Sequence[tuple[int, Any]]) -> list[Segment]:
    """`usage_facts` of a positioned batch, remembered for the same batch object: the projections of one
    transaction (or one rebuild chunk) are handed the same list, and the grouping is done once for all."""
    if _last[0] is not batch:
        _last[0], _last[1] = batch, _facts(batch)
    return _last[1]


def only_facts(segments: Iterable[Segment]) -> Iterable[Facts]:
    return (s for s in segments if type(s) is dict)


class Counts(msgspec.Struct):
    """Running totals for one key of a projection."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    errors: int = 0
    estimated_calls: int = 0
    cached_tokens: int = 0


def add_facts(segments: Iterable[Segment], key: Callable[[FactKey], Any],
              into: dict[Any, Counts] | None = None) -> dict[Any, Counts]:
    """Sum facts into totals per `key(fact key)`."""
    out: dict[Any, Counts] = {} if into is None else into
    for facts in only_facts(segments):
        for k, (tokens_in, tokens_out, calls, cached) in facts.items():
            group = key(k)
            c = out.get(group)
            if c is None:
                c = out[group] = Counts()
            c.input_tokens += tokens_in
            c.output_tokens += tokens_out
            c.calls += calls
            c.cached_tokens += cached
            if k[4]:
                c.errors += calls
            if k[5]:
                c.estimated_calls += calls
    return out


def by_endpoint(k: FactKey) -> tuple[str, str]:
    return k[2], k[3]


def by_tenant(k: FactKey) -> tuple[str, str]:
    return k[1], k[3]


def fold_token_counts(events: Iterable[Any]) -> dict[tuple[str, str], Counts]:
    """Token totals per (endpoint, model); calls that reached no endpoint count under ''."""
    return add_facts(usage_facts(events), by_endpoint)


def fold_tenant_counts(events: Iterable[Any]) -> dict[tuple[str, str], Counts]:
    """Token totals per (tenant, model)."""
    return add_facts(usage_facts(events), by_tenant)


SeriesKey = tuple[int, str, str, str]     # (minute as epoch seconds | day as epoch days, tenant, endpoint, model)


def fold_series(segments: Iterable[Segment], trimmed_before: int | None = None,
                minutes: dict[SeriesKey, Counts] | None = None, days: dict[SeriesKey, Counts] | None = None,
                ) -> tuple[dict[SeriesKey, Counts], dict[SeriesKey, Counts]]:
    """Totals per (UTC minute, tenant, endpoint, model) and per (UTC day, tenant, endpoint, model).

    Minutes before `trimmed_before` (epoch seconds) were trimmed: their calls count in days only.
    """
    segments = list(segments)
    kept = segments if trimmed_before is None else [
        {k: f for k, f in facts.items() if k[0] >= trimmed_before} for facts in only_facts(segments)]
    minutes = add_facts(kept, lambda k: k[:4], minutes)
    days = add_facts(segments, lambda k: (k[0] // 86400, k[1], k[2], k[3]), days)
    return minutes, days
