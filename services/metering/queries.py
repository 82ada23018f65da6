"""Read the usage projections for the monitoring API."""

from __future__ import annotations

import asyncpg

from libs.contracts.messages import TokenCount, TokenCountsReply


async def token_counts(conn: asyncpg.Connection, tenant_id: str | None) -> TokenCountsReply:
    """Totals per endpoint x model (all tenants), or per model for one tenant."""
    if tenant_id is None:
        rows = await conn.fetch(
            "SELECT endpoint, model, input_tokens, output_tokens, calls FROM token_counts ORDER BY endpoint, model"
        )
    else:
        rows = await conn.fetch(
            "SELECT '' AS endpoint, model, input_tokens, output_tokens, calls FROM tenant_token_counts"
            " WHERE tenant = $1 ORDER BY model",
            tenant_id,
        )
    breakdown = [
        TokenCount(r["endpoint"], r["model"], r["input_tokens"], r["output_tokens"],
                   r["input_tokens"] + r["output_tokens"], r["calls"])
        for r in rows
    ]
    return TokenCountsReply(sum(t.total_tokens for t in breakdown), breakdown)
