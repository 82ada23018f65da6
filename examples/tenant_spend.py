"""Keep every tenant's spend in a table of your own, from Switchyard's event log: catch up, then follow it live.

    python examples/tenant_spend.py --database postgresql://127.0.0.1/billing            # until Ctrl-C
    python examples/tenant_spend.py --database postgresql://127.0.0.1/billing --report   # print the table

It is a subscriber (`switchyard_gateway.subscribe`): it asks metering for the log from where it stopped
(through its door, `metering.subscriber.v1.<user>.<name>...`), then follows the LOG stream, and writes each batch
of events into `tenant_spend` in the transaction that records its position, so that a kill at any moment neither
loses nor counts twice a call. The prices are the registry's, folded from the same log in log order (`model.registered.v1`, a tenant's assignment
overriding them), kept in `tenant_spend_prices`: a call costs what its model cost for its tenant when it was made,
as in metering's own figures. With `--tenant` it follows one tenant's events only (NATS may allow it no more);
those carry the tenant's own prices but not the models' list prices, so calls priced by those count as unpriced.
A row of the log too large for one NATS message comes as an `EventWithheld`: it is noted in `tenant_spend_withheld`
and `--report` says so, as the figures leave it out (`Subscriber.fetch` reads it once the limit carries it);
`--report` shows the unpriced calls beside the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from decimal import Decimal

import asyncpg

from switchyard_gateway.contracts.events import ModelRegistered, TenantModelAssigned, TenantModelUnassigned, UsageRecorded
from switchyard_gateway.kit.settings import mask_password
from switchyard_gateway.subscribe import Event, EventWithheld, NotAuthorized, NotPermitted, Subscriber

TYPES = ["usage", "model.registered", "tenant.model_assigned", "tenant.model_unassigned"]
CONNECT_TIMEOUT_S = 10.0
SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_spend (
    tenant text PRIMARY KEY, calls bigint NOT NULL, errors bigint NOT NULL, unpriced_calls bigint NOT NULL,
    input_tokens bigint NOT NULL, output_tokens bigint NOT NULL, cached_tokens bigint NOT NULL,
    cost_usd numeric NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS tenant_spend_prices (   -- nano-USD per 1M tokens; tenant '' is the model's own price
    tenant text, model text, input bigint, output bigint, cached bigint, PRIMARY KEY (tenant, model));
CREATE TABLE IF NOT EXISTS tenant_spend_withheld (   -- rows of the log too large for one NATS message: not counted
    position bigint PRIMARY KEY, event_id uuid NOT NULL, type text NOT NULL, tenant text);
"""
ADD = """
INSERT INTO tenant_spend AS s (tenant, calls, errors, unpriced_calls, input_tokens, output_tokens, cached_tokens,
                               cost_usd)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::numeric[])
ON CONFLICT (tenant) DO UPDATE SET calls = s.calls + excluded.calls, errors = s.errors + excluded.errors,
    unpriced_calls = s.unpriced_calls + excluded.unpriced_calls, input_tokens = s.input_tokens + excluded.input_tokens,
    output_tokens = s.output_tokens + excluded.output_tokens, cached_tokens = s.cached_tokens + excluded.cached_tokens,
    cost_usd = s.cost_usd + excluded.cost_usd, updated_at = now()
"""
Prices = dict[tuple[str, str], tuple[int | None, int | None, int | None]]


def nano(usd_per_1m: float | None) -> int | None:
    """USD per 1M tokens as whole nano-USD per 1M tokens, i.e. femto-USD per token (an exact integer)."""
    return None if usd_per_1m is None else int((Decimal(repr(float(usd_per_1m))) * 10**9).to_integral_value())


def cost_femto(prices: Prices, usage: UsageRecorded) -> int | None:
    """What one call cost in femto-USD at the prices as they stand (None: its model has no price)."""
    model = usage.model if ("", usage.model) in prices else usage.model.removesuffix(":latest")
    if ("", model) not in prices:
        return None
    base_in, base_out, base_cached = prices[("", model)]
    own_in, own_out, own_cached = prices.get((usage.tenant_id, model), (None, None, None))
    price_in = base_in if own_in is None else own_in
    price_out = base_out if own_out is None else own_out
    cached_price = own_cached if own_cached is not None else base_cached if base_cached is not None else price_in
    cached = min(max(usage.cached_tokens, 0), usage.input_tokens)
    return (usage.input_tokens - cached) * (price_in or 0) + cached * (cached_price or 0) \
        + usage.output_tokens * (price_out or 0)


async def apply(conn: asyncpg.Connection, batch: list[tuple[int, Event | EventWithheld]]) -> None:
    """Fold a batch in log order: prices move, calls add up per tenant; then write both."""
    prices: Prices = {(r["tenant"], r["model"]): (r["input"], r["output"], r["cached"])
                      for r in await conn.fetch("SELECT * FROM tenant_spend_prices")}
    changed: set[tuple[str, str]] = set()
    spend: dict[str, list[int]] = {}          # tenant -> calls, errors, unpriced, input, output, cached, femto-USD
    for position, event in batch:
        match event:
            case EventWithheld():
                await conn.execute("INSERT INTO tenant_spend_withheld VALUES ($1, $2, $3, $4)", position,
                                   event.event_id, event.event_type, event.tenant)
            case UsageRecorded():
                row = spend.setdefault(event.tenant_id, [0] * 7)
                femto = cost_femto(prices, event)
                row[0] += 1
                row[1] += event.outcome != "ok"
                row[2] += femto is None
                row[3] += event.input_tokens
                row[4] += event.output_tokens
                row[5] += event.cached_tokens
                row[6] += femto or 0
            case ModelRegistered():
                prices[("", event.model_id)] = (nano(event.input_price_per_1m) or 0,
                                                nano(event.output_price_per_1m) or 0,
                                                nano(event.cached_input_price_per_1m))
                changed.add(("", event.model_id))
            case TenantModelAssigned():
                prices[(event.tenant_id, event.model_id)] = (nano(event.input_price_per_1m),
                                                             nano(event.output_price_per_1m),
                                                             nano(event.cached_input_price_per_1m))
                changed.add((event.tenant_id, event.model_id))
            case TenantModelUnassigned():
                prices.pop((event.tenant_id, event.model_id), None)
                changed.add((event.tenant_id, event.model_id))
    for tenant, model in changed:
        await conn.execute("DELETE FROM tenant_spend_prices WHERE tenant = $1 AND model = $2", tenant, model)
        if (tenant, model) in prices:
            await conn.execute("INSERT INTO tenant_spend_prices VALUES ($1, $2, $3, $4, $5)", tenant, model,
                               *prices[(tenant, model)])
    if spend:
        rows = [(tenant, *figures[:6], Decimal(figures[6]).scaleb(-15)) for tenant, figures in spend.items()]
        await conn.execute(ADD, *(list(column) for column in zip(*rows)))


async def connect(database_url: str) -> asyncpg.Connection:
    """Your database, or an exit in one line saying why not (its password masked), rather than a traceback."""
    try:
        return await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise SystemExit(f"tenant_spend.py: cannot reach the database {mask_password(database_url)}: {why}") from None


async def report(database_url: str) -> int:
    conn = await connect(database_url)
    try:
        await conn.execute(SCHEMA)
        rows = await conn.fetch("SELECT * FROM tenant_spend ORDER BY cost_usd DESC, tenant")
        withheld = await conn.fetch("SELECT * FROM tenant_spend_withheld ORDER BY position")
    finally:
        await conn.close()
    print(f"{'tenant':<24} {'calls':>10} {'errors':>8} {'unpriced':>9} {'input':>14} {'output':>14} "
          f"{'cost USD':>16}")
    for r in rows:
        print(f"{r['tenant']:<24} {r['calls']:>10,} {r['errors']:>8,} {r['unpriced_calls']:>9,} "
              f"{r['input_tokens']:>14,} {r['output_tokens']:>14,} {r['cost_usd']:>16.6f}")
    if any(r["unpriced_calls"] for r in rows):
        print("unpriced: calls whose model had no price this subscriber could see, not in the cost (with --tenant, the "
              "models' list prices are not among its events)")
    if withheld:
        print(f"not counted: {len(withheld)} row(s) of the log too large for one NATS message, at positions "
              + ", ".join(f"{w['position']} ({w['type']}, tenant {w['tenant'] or '-'})" for w in withheld))
    return 0


async def follow(args: argparse.Namespace) -> int:
    conn = await connect(args.database)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    subscriber = Subscriber(args.name, apply, nats_url=args.nats, database_url=args.database, types=TYPES,
                            tenant=args.tenant)
    running = asyncio.ensure_future(subscriber.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, running.cancel)
    started = time.perf_counter()

    async def live() -> None:
        await subscriber.live.wait()
        seconds = time.perf_counter() - started
        print(f"tenant-spend: live at position {subscriber.position.value:,}: {subscriber.applied:,} events applied "
              f"in {seconds:.2f} s ({subscriber.applied / max(seconds, 1e-9):,.0f} events/s)", flush=True)
        if args.catch_up_only:
            running.cancel()

    announcing = asyncio.ensure_future(live())
    try:
        await running
    except asyncio.CancelledError:
        pass
    except (NotAuthorized, NotPermitted) as exc:          # NATS or metering away is waited out; this is not
        why = exc.body.message if isinstance(exc, NotPermitted) else str(exc)
        raise SystemExit(f"tenant_spend.py: {why}") from None
    finally:
        announcing.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tenant_spend.py", description="Keep every tenant's calls, tokens and cost in a PostgreSQL table of your "
        "own, from Switchyard's event log: catch up from where it stopped, then follow live; exactly once.")
    parser.add_argument("--database", default=os.environ.get("TENANT_SPEND_DATABASE_URL"),
                        help="your PostgreSQL (tables tenant_spend, tenant_spend_prices, switchyard_subscriptions); "
                             "default $TENANT_SPEND_DATABASE_URL")
    parser.add_argument("--nats", default=os.environ.get("SWITCHYARD_NATS_URL"),
                        help="Switchyard's NATS, with a user allowed to replay, nats://USER:PASSWORD@HOST:PORT (default "
                             "$SWITCHYARD_NATS_URL): `switchyard up --nats-users F` says where at start, and keeps the "
                             "port in its data dir's stack.json (ports.nats)")
    parser.add_argument("--name", default="tenant-spend", help="the subscriber's name: its position and dead letters")
    parser.add_argument("--tenant", help="follow this tenant's events only")
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--catch-up-only", action="store_true", help="stop once caught up with the log")
    args = parser.parse_args(argv)
    if not args.database:
        parser.error("--database (or TENANT_SPEND_DATABASE_URL) is required")
    if not args.nats and not args.report:
        parser.error("--nats (or SWITCHYARD_NATS_URL) is required: `switchyard up --nats-users F` says where at start")
    return asyncio.run(report(args.database) if args.report else follow(args))


if __name__ == "__main__":
    sys.exit(main())
