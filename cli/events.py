"""`switchyard events`: follow the event log, or export it as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    events = sub.add_parser(
        "events", help="read the event log: follow it, or export it as JSON lines",
        description="Read the event log of `switchyard up --data-dir D` (or SWITCHYARD_DATABASE_URL).")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    tail = events_sub.add_parser("tail", help="print the last events, then each new one as it is recorded")
    tail.add_argument("--type", help="an event type, or a prefix of one: usage, tenant, usage.recorded.v1 ...")
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

def run(args: argparse.Namespace) -> int:
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
