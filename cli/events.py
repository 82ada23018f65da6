"""`switchyard events`: follow the event log, export it as JSON lines, print the published contracts, or list and
retry the events consumers set aside (dead letters)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from switchyard_gateway.cli.say import say

MAX_LINES = 1_000_000     # past events `tail -n` prints at most (export writes any number)


def _count(text: str) -> int:
    """`-n`: a whole number of events from 0 to MAX_LINES (argparse turns the error into a one-line usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_LINES:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and {MAX_LINES:,}")
    return value


DATA_DIR = "./.switchyard"                 # up's default data directory
AGO = re.compile(r"^-\d+(?:\.\d+)?\s*[smhdw]\Z")        # `--since -5m`: an age written as "minus", read as ago


def add_data_dir(parser: argparse.ArgumentParser, server: str) -> None:
    """--data-dir: the stack of `switchyard up` a command reads, said the same way by each command."""
    variable = {"database": "SWITCHYARD_DATABASE_URL", "NATS": "SWITCHYARD_NATS_URL"}[server]
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,         # argparse makes the default a Path too
                        help=f"the data directory of the `switchyard up` whose {server} to use, unless {variable} "
                             f"is set (default: {DATA_DIR}, as up's)")


def joined_ages(argv: list[str]) -> list[str]:
    """`--since -5m` as `--since=-5m`: argparse takes a value starting with '-' for an option and refuses it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--since", "--until") and AGO.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _instant(text: str) -> Any:
    """--since/--until as eventtools reads them, an age written with a minus (-5m) taken as the same age ago."""
    from switchyard_gateway.services.metering import eventtools

    return eventtools.parse_time(text.strip().removeprefix("-") if AGO.match(text.strip()) else text)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    events = sub.add_parser(
        "events", help="read the event log (follow it, export it as JSON lines), print the published contracts' "
                       "schemas, list or retry dead letters",
        description="Read the event log of `switchyard up --data-dir D` (or SWITCHYARD_DATABASE_URL), print the "
                    "published contracts, and list or send back the events consumers set aside.")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    tail = events_sub.add_parser("tail", help="print the last events, then each new one as it is recorded")
    tail.add_argument("--type", help="an event type, or a prefix of one: usage, tenant, usage.recorded.v2 ...")
    tail.add_argument("--tenant", help="only this tenant's events")
    tail.add_argument("-n", "--lines", type=_count, default=10,
                      help=f"how many past events to print first, 0 to {MAX_LINES:,} (default 10)")
    tail.add_argument("--no-follow", action="store_true", help="print the past events and stop")
    add_data_dir(tail, "database")
    export = events_sub.add_parser("export", help="write events as JSON lines, one stored event per line",
                                   description="switchyard events export --since 7d > usage.jsonl")
    export.add_argument("--since", required=True,
                        help="events that occurred from then on: ISO 8601 (2026-11-22T10:00:00Z) or an age (30m, 7d; "
                             "-30m is read as 30m ago too)")
    export.add_argument("--until", help="and before then (same forms)")
    export.add_argument("--type", help="an event type, or a prefix of one")
    export.add_argument("--tenant", help="only this tenant's events")
    add_data_dir(export, "database")
    schema = events_sub.add_parser(
        "schema", help="list the published contracts, or print one's JSON Schema, or the AsyncAPI document",
        description="switchyard events schema usage.recorded.v2 > usage.recorded.v2.json")
    schema.add_argument("name", nargs="?", help="an event type (usage.recorded.v2) or a message "
                                                "(quota.query.v1.request, quota.query.v1.reply, service.error)")
    schema.add_argument("--asyncapi", action="store_true",
                        help="print the AsyncAPI 3.0 document (YAML) of every contract, instead of one NAME's schema")
    schema.add_argument("--write", type=Path, metavar="DIR",
                        help="write every schema, the index and asyncapi.yaml under DIR (docs/contracts), instead of "
                             "printing")
    dead = events_sub.add_parser(
        "dead-letters", help="list the events consumers set aside (DEADLETTER), or send them back",
        description="List the events a consumer could not decode or apply, with the error, from NATS (stream "
                    "DEADLETTER) of `switchyard up --data-dir D` or SWITCHYARD_NATS_URL; --retry sends them back, "
                    "--remove gives them up.")
    dead.add_argument("--consumer", help="only this consumer's (metering, gateway:REGISTRY, a subscriber's name)")
    which = dead.add_mutually_exclusive_group()
    which.add_argument("--retry", type=int, nargs="+", metavar="ID", help="send back these dead letters (by ID)")
    which.add_argument("--all", action="store_true", help="send back every dead letter not retried yet")
    which.add_argument("--remove", type=int, nargs="+", metavar="ID",
                       help="remove these dead letters (by ID) and the retries asked for them: their events are given "
                            "up by their consumer (a subscriber's waits for a retry no more)")
    dead.add_argument("--json", action="store_true", help="one JSON object a line")
    add_data_dir(dead, "NATS")


def run(args: argparse.Namespace) -> int:
    if args.events_command == "schema":
        return _schema(args)
    if args.events_command == "dead-letters":
        return asyncio.run(_dead_letters(args))
    from switchyard_gateway.services.metering import eventtools

    data_dir = args.data_dir.absolute()
    try:
        if args.events_command == "tail":
            return asyncio.run(eventtools.tail(data_dir, args.type, args.tenant, args.lines, not args.no_follow))
        since = _instant(args.since)
        until = _instant(args.until) if args.until else None
        if until is not None and until <= since:
            print(f"switchyard: --until ({until.isoformat()}) is not after --since ({since.isoformat()}): no event "
                  "lies between them", file=sys.stderr)
            return 1
        return asyncio.run(eventtools.export(data_dir, since, until, args.type, args.tenant))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:             # `... | head`
        return 0


def _schema(args: argparse.Namespace) -> int:
    from switchyard_gateway.contracts import asyncapi, published, schemas

    if args.name is not None and (args.asyncapi or args.write is not None):
        given = "--asyncapi" if args.asyncapi else "--write"
        print(f"switchyard events schema: {given} covers every contract, not {args.name!r} alone: give {given} or "
              "NAME, not both", file=sys.stderr)
        return 2
    if args.asyncapi and args.write is not None:
        print("switchyard events schema: --write writes asyncapi.yaml too; give --asyncapi or --write, not both",
              file=sys.stderr)
        return 2
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


async def _remove(nc: Any, letters: list[Any], args: argparse.Namespace) -> int:
    """Delete the chosen dead letters and their retries from DEADLETTER; 2 if one named is not there."""
    from switchyard_gateway.contracts import subjects

    js = nc.jetstream(timeout=10)
    chosen = [one for one in letters if one.id in args.remove]
    for one in chosen:
        for sequence in (one.id, *one.retries):
            await js.delete_msg(subjects.STREAM_DEADLETTER, sequence)
        print(f"dead letter {one.id} ({one.letter.consumer}, {one.letter.source}:{one.letter.sequence}) removed, "
              f"with {len(one.retries)} retr{'y' if len(one.retries) == 1 else 'ies'} asked for it")
    missing = sorted(set(args.remove) - {one.id for one in chosen})
    if missing:
        print(f"switchyard: no dead letter {', '.join(map(str, missing))}"
              f"{f' of {args.consumer}' if args.consumer else ''}", file=sys.stderr)
        return 2
    return 0


async def _dead_letters(args: argparse.Namespace) -> int:
    from switchyard_gateway.cli import deadletters
    from switchyard_gateway.kit import natsio
    from switchyard_gateway.kit.stack import running_url

    nc = await natsio.connect(running_url(args.data_dir.absolute(), "nats_url"), "switchyard-events", 10)
    try:
        await natsio.ensure_streams(nc, update=False)       # the stack's streams as they are (replicas and all)
        skipped: list[int] = []
        letters = await deadletters.read(nc, args.consumer, skipped)
        if skipped:
            say(deadletters.skipped_line(skipped))
        if args.remove:
            return await _remove(nc, letters, args)
        if args.retry is None and not args.all:
            deadletters.show(letters, args.json)
            return 0
        chosen = [one for one in letters if one.id in args.retry] if args.retry else \
            [one for one in letters if not one.retries and not one.forged]
        if not args.retry and any(one.forged for one in letters):
            print(f"switchyard: {sum(one.forged for one in letters)} forged dead letter(s) left alone (each names "
                  "another consumer than the one whose subject it was written on)", file=sys.stderr)
        missing = sorted(set(args.retry or ()) - {one.id for one in chosen})
        refused = 0
        for one in chosen:
            try:
                sequence = await deadletters.send_back(nc, one)
            except deadletters.Refused as why:
                refused += 1
                print(f"switchyard: dead letter {one.id} is not sent back: {why}", file=sys.stderr)
                continue
            again = "published again on its subject, " if deadletters.republished(one.letter) else ""
            print(f"dead letter {one.id} ({one.letter.consumer}, {one.letter.source}:{one.letter.sequence}): "
                  f"{again}retry {sequence} asked for")
        if missing:
            print(f"switchyard: no dead letter {', '.join(map(str, missing))}"
                  f"{f' of {args.consumer}' if args.consumer else ''}", file=sys.stderr)
            return 2
        if not chosen:
            print("nothing to retry")
        return 1 if refused else 0
    finally:
        await nc.close()
