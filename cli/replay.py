"""`switchyard replay`: drop a projection and rebuild it from position 0 of the event log."""

from __future__ import annotations

import argparse
import asyncio

from switchyard_gateway.cli.events import add_data_dir
from switchyard_gateway.cli.say import say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = sub.add_parser(
        "replay", help="drop a projection and rebuild it from the event log",
        description="Rebuild one projection (or all) from position 0 of the event log while the system "
                    "keeps serving. Finds the database of `switchyard up --data-dir D` or uses "
                    "SWITCHYARD_DATABASE_URL.",
    )
    replay.add_argument("projection", nargs="?", help="projection name (see --list)")
    replay.add_argument("--all", action="store_true", help="rebuild every projection")
    replay.add_argument("--list", action="store_true", help="list the projections and their positions")
    add_data_dir(replay, "database")

def run(args: argparse.Namespace) -> int:
    from switchyard_gateway.services.metering import replay as tool
    from switchyard_gateway.services.metering.projections import PROJECTIONS
    from switchyard_gateway.services.quota import replay as quota_tool

    known = ", ".join(sorted([*PROJECTIONS, quota_tool.NAME]))      # what --list names
    if not (args.list or args.all or args.projection):
        say(f"name a projection ({known}), or use --all or --list")
        return 2
    if args.projection and args.projection not in PROJECTIONS and args.projection != quota_tool.NAME:
        say(f"unknown projection {args.projection}; known: {known}")
        return 2
    if args.projection == quota_tool.NAME and not (args.all or args.list):    # the counters in Valkey
        return asyncio.run(quota_tool.run(args.data_dir.absolute()))
    names = sorted(PROJECTIONS) if args.all else [args.projection] if args.projection else []
    code = asyncio.run(tool.run(names, args.data_dir.absolute(), list_only=args.list))
    if code == 0 and (args.all or args.list):
        code = asyncio.run(quota_tool.run(args.data_dir.absolute(), list_only=args.list))
    return code
