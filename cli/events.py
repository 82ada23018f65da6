"""`switchyard events`: follow the event log, export it as JSON lines, or print the published contracts."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    events = sub.add_parser(
        "events", help="read the event log: follow it, or export it as JSON lines",
        description="Read the event log of `switchyard up --data-dir D` (or SWITCHYARD_DATABASE_URL).")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    tail = events_sub.add_parser("tail", help="print the last events, then each new one as it is recorded")
    tail.add_argument("--type", help="an event type, or a prefix of one: usage, tenant, usage.recorded.v2 ...")
    tail.add_argument("--tenant", help="only this tenant's events")
    tail.add_argument("-n", "--lines", type=int, default=10, help="how many past events to print first (default 10)")
    tail.add_argument("--no-follow", action="store_true", help="print the past events and stop")
    tail.add_argument("--data-dir", type=Path, default=Path("./.switchyard"))
    export = events_sub.add_parser("export", help="write events as JSON lines, one stored event per line",
                                   description="switchyard events export --since 7d > usage.jsonl")
    export.add_argument("--since", required=True,
                        help="events that occurred from then on: ISO 8601 (2026-11-22T10:00:00Z) or an age (30m, 7d)")
    export.add_argument("--until", help="and before then (same forms)")
    export.add_argument("--type", help="an event type, or a prefix of one")
    export.add_argument("--tenant", help="only this tenant's events")
    export.add_argument("--data-dir", type=Path, default=Path("./.switchyard"))
    schema = events_sub.add_parser(
        "schema", help="list the published contracts, or print one's JSON Schema, or the AsyncAPI document",
        description="switchyard events schema usage.recorded.v2 > usage.recorded.v2.json")
    schema.add_argument("name", nargs="?", help="an event type (usage.recorded.v2) or a message "
                                                "(quota.query.v1.request, quota.query.v1.reply, service.error)")
    schema.add_argument("--asyncapi", action="store_true", help="print the AsyncAPI 3.0 document (YAML)")
    schema.add_argument("--write", type=Path, metavar="DIR",
                        help="write every schema, the index and asyncapi.yaml under DIR (docs/contracts)")


def run(args: argparse.Namespace) -> int:
    if args.events_command == "schema":
        return _schema(args)
    from switchyard_gateway.services.metering import eventtools

    data_dir = args.data_dir.absolute()
    try:
        if args.events_command == "tail":
            return asyncio.run(eventtools.tail(data_dir, args.type, args.tenant, args.lines, not args.no_follow))
        since = eventtools.parse_time(args.since)
        until = eventtools.parse_time(args.until) if args.until else None
        return asyncio.run(eventtools.export(data_dir, since, until, args.type, args.tenant))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:             # `... | head`
        return 0


def _schema(args: argparse.Namespace) -> int:
    from switchyard_gateway.contracts import asyncapi, published, schemas

    if args.write is not None:
        written = published.write(args.write)
        print(f"wrote {len(written)} files under {args.write}")
        return 0
    if args.asyncapi:
        sys.stdout.write(asyncapi.text())
        return 0
    if args.name is None:
        width = max(len(name) for name in schemas.CONTRACTS)
        for contract in schemas.CONTRACTS.values():
            print(f"{contract.name:<{width}}  {contract.kind:<7}  {contract.summary}")
        return 0
    if args.name not in schemas.CONTRACTS:
        near = [n for n in schemas.CONTRACTS if n.startswith(args.name.rsplit(".", 1)[0])]
        hint = f"; did you mean {', '.join(near)}?" if near else "; `switchyard events schema` lists them"
        print(f"switchyard events schema: no contract named {args.name!r}{hint}", file=sys.stderr)
        return 2
    print(json.dumps(schemas.json_schema(args.name), indent=2, ensure_ascii=False))
    return 0
