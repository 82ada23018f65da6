"""Usage projections: pure folds over usage events and the SQL that applies their deltas."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import asyncpg
import msgspec

from libs.contracts import subjects
from libs.contracts.events import Event, UsageRecorded
from libs.kit.eventlog import Positioned


class Counts(msgspec.Struct):
    """Running totals for one key of a projection."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    errors: int = 0


def _fold(events: Iterable[Event], key: Callable[[UsageRecorded], tuple[str, str]]) -> dict[tuple[str, str], Counts]:
    out: dict[tuple[str, str], Counts] = {}
    for event in events:
        match event:
            case UsageRecorded():
                k = key(event)
                c = out.get(k)
                if c is None:
                    c = out[k] = Counts()
                c.input_tokens += event.input_tokens
                c.output_tokens += event.output_tokens
                c.calls += 1
                c.errors += event.outcome != "ok"
    return out


def fold_token_counts(events: Iterable[Event]) -> dict[tuple[str, str], Counts]:
    """Token totals per (endpoint, model); calls that reached no endpoint count under ''."""
    return _fold(events, lambda e: (e.endpoint_id, e.model))


def fold_tenant_counts(events: Iterable[Event]) -> dict[tuple[str, str], Counts]:
    """Token totals per (tenant, model)."""
    return _fold(events, lambda e: (e.tenant_id, e.model))


def _columns(deltas: dict[tuple[str, str], Counts]) -> list[list[object]]:
    keys = list(deltas)
    values = [deltas[k] for k in keys]
    return [
        [k[0] for k in keys], [k[1] for k in keys],
        [v.input_tokens for v in values], [v.output_tokens for v in values],
        [v.calls for v in values], [v.errors for v in values],
    ]


class TokenCounts:
    """`token_counts` (per endpoint x model) and `tenant_token_counts` (per tenant x model)."""

    name = "token_counts"
    event_types = frozenset({subjects.USAGE_RECORDED})
    tables = ("token_counts", "tenant_token_counts")

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Positioned]) -> None:
        events = [event for _, event in batch]
        by_endpoint = fold_token_counts(events)
        if by_endpoint:
            await conn.execute(
                """
                INSERT INTO token_counts AS t (endpoint, model, input_tokens, output_tokens, calls)
                SELECT a, b, c, d, e FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                    AS u(a, b, c, d, e)
                ON CONFLICT (endpoint, model) DO UPDATE SET
                    input_tokens = t.input_tokens + excluded.input_tokens,
                    output_tokens = t.output_tokens + excluded.output_tokens,
                    calls = t.calls + excluded.calls
                """,
                *_columns(by_endpoint)[:5],
            )
        by_tenant = fold_tenant_counts(events)
        if by_tenant:
            await conn.execute(
                """
                INSERT INTO tenant_token_counts AS t (tenant, model, input_tokens, output_tokens, calls, errors)
                SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
                ON CONFLICT (tenant, model) DO UPDATE SET
                    input_tokens = t.input_tokens + excluded.input_tokens,
                    output_tokens = t.output_tokens + excluded.output_tokens,
                    calls = t.calls + excluded.calls,
                    errors = t.errors + excluded.errors
                """,
                *_columns(by_tenant),
            )


PROJECTIONS = {p.name: p for p in (TokenCounts(),)}
