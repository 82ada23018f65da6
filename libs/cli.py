"""The `switchyard` command: run the system, the upstream simulator, and event-log tools."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from libs.kit.stack import StackUrls
from libs.kit.stack_proc import pick_free_port
from libs.kit.supervisor import Supervisor

SERVICES = ("registry", "metering", "router", "quota", "gateway")   # start order; stop runs reversed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchyard",
        description="Switchyard, an AI model gateway: one OpenAI- and Ollama-compatible front door for "
                    "every model server, with routing, quotas and an event-sourced usage log.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up", help="run the whole system on this machine",
        description="Start NATS, PostgreSQL and Valkey from their pip-installed binaries (unless "
                    "SWITCHYARD_NATS_URL, SWITCHYARD_DATABASE_URL or SWITCHYARD_REDIS_URL point at running "
                    "ones), then every service as its own process; restart a service that crashes; stop "
                    "everything on Ctrl-C or SIGTERM.",
    )
    up.add_argument("--data-dir", type=Path, default=Path("./.switchyard"),
                    help="where data, logs and the spool live (default: ./.switchyard); a second `up` keeps it")
    up.add_argument("--host", default="127.0.0.1", help="gateway listen address (default: 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="gateway port (default: 8080)")
    up.add_argument("--demo", action="store_true",
                    help="also start two simulated upstreams (Ollama-style and OpenAI-style) and a demo "
                         "tenant 'demo' serving llama3.2 and nomic-embed-text")
    up.add_argument("--no-fsync", action="store_true",
                    help="run the embedded PostgreSQL and Valkey without fsync (faster; for benchmarks)")
    up.add_argument("--config", type=Path, default=None,
                    help="a registry document (providers, endpoints, models, tenants) applied at start as "
                         "registry commands; applying it again changes nothing (default: ./switchyard.yaml "
                         "if present)")

    config = sub.add_parser("config", help="check a switchyard.yaml registry document")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    validate = config_sub.add_parser(
        "validate", help="report every problem of a config file with its path; exit 1 if there is any",
        description="Check a registry document without starting anything: YAML syntax, unknown keys, types, "
                    "identifiers, URL schemes and port ranges, credentials given only as ${ENV_VAR}, dangling "
                    "references (endpoint -> provider, assignment -> model, fallbacks) and duplicate identifiers.")
    validate.add_argument("file", type=Path, help="the file to check, e.g. switchyard.yaml")

    sim = sub.add_parser("simulate-upstream", add_help=False,
                         help="run the upstream model-server simulator (OpenAI and Ollama APIs)")
    sim.add_argument("args", nargs=argparse.REMAINDER)

    replay = sub.add_parser(
        "replay", help="drop a projection and rebuild it from the event log",
        description="Rebuild one projection (or all) from position 0 of the event log while the system "
                    "keeps serving. Finds the database of `switchyard up --data-dir D` or uses "
                    "SWITCHYARD_DATABASE_URL.",
    )
    replay.add_argument("projection", nargs="?", help="projection name (see --list)")
    replay.add_argument("--all", action="store_true", help="rebuild every projection")
    replay.add_argument("--list", action="store_true", help="list the projections and their positions")
    replay.add_argument("--data-dir", type=Path, default=Path("./.switchyard"))

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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate-upstream"]:
        from libs.simulator import main as simulate
        return simulate(argv[1:]) or 0
    args = _parser().parse_args(argv)
    if args.command == "up":
        return up(args)
    if args.command == "replay":
        return replay(args)
    if args.command == "events":
        return events_command(args)
    if args.command == "config":
        return config_validate(args.file)
    return 2


# --- up ----------------------------------------------------------------------------------------


def up(args: argparse.Namespace) -> int:
    from libs.kit.stack import EmbeddedStack, StackError

    config_path = args.config or (Path("switchyard.yaml") if Path("switchyard.yaml").exists() else None)
    args.registry_doc = None
    if config_path is not None:
        args.registry_doc = _load_config(config_path)
        if args.registry_doc is None:
            return 1
    data_dir: Path = args.data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGINT, signal.SIGTERM):       # Ctrl-C or SIGTERM at any point stops cleanly
        signal.signal(signum, _raise_stopping)
    env = os.environ
    stack = EmbeddedStack(
        data_dir, nats_url=env.get("SWITCHYARD_NATS_URL"), database_url=env.get("SWITCHYARD_DATABASE_URL"),
        redis_url=env.get("SWITCHYARD_REDIS_URL"), durable=not args.no_fsync,
    )
    say(f"starting NATS, PostgreSQL and Valkey under {data_dir} ...")
    try:
        urls = stack.start()
    except StackError as exc:
        say(f"could not start the embedded stack: {exc}")
        return 1
    except Stopping:
        stack.stop()
        return 0
    supervisor = Supervisor(data_dir / "logs")
    try:
        return _run_services(args, data_dir, urls, supervisor)
    except Stopping:
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):   # a second Ctrl-C must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        say("stopping ...")
        supervisor.stop(order=[*reversed(SERVICES)])
        stack.stop()
        say("stopped")


def _run_services(args: argparse.Namespace, data_dir: Path, urls: StackUrls, supervisor: Supervisor) -> int:
    from libs.kit import bootstrap as boot

    admin_key, demo_key, generated = boot.remembered_keys(
        data_dir / "keys.env", os.environ.get("SWITCHYARD_ADMIN_KEY"), os.environ.get("SWITCHYARD_DEMO_KEY"))
    taken = {args.port}
    common = {
        "SWITCHYARD_NATS_URL": urls.nats_url, "SWITCHYARD_DATABASE_URL": urls.database_url,
        "SWITCHYARD_REDIS_URL": urls.redis_url,
        "SWITCHYARD_SPOOL_DIR": str(data_dir / "spool"),
    }
    ports: dict[str, int] = {}
    for name in SERVICES:
        port = args.port if name == "gateway" else pick_free_port(taken)
        taken.add(port)
        ports[name] = port
        host = args.host if name == "gateway" else "127.0.0.1"
        env = {**common, "SWITCHYARD_HOST": host, "SWITCHYARD_PORT": str(port)}
        if name == "registry":
            env["SWITCHYARD_ADMIN_KEY"] = admin_key     # the registry issues it (idempotently) at start
        supervisor.add(name, [sys.executable, "-m", f"services.{name}"], env)
    sims: dict[str, int] = {}
    if args.demo:
        for name in ("sim-ollama", "sim-openai"):
            sims[name] = pick_free_port(taken)
            taken.add(sims[name])
            supervisor.add(name, [sys.executable, "-m", "libs.simulator", "--host", "127.0.0.1",
                                  "--port", str(sims[name])], {})

    commands = []
    if args.demo:
        commands += boot.demo_commands(f"http://127.0.0.1:{sims['sim-ollama']}",
                                       f"http://127.0.0.1:{sims['sim-openai']}", demo_key)
    if args.registry_doc is not None:
        commands.append(boot.config_command(args.registry_doc))
    try:
        if commands:
            replies = asyncio.run(_bootstrap(urls.nats_url, commands))
            if args.registry_doc is not None:
                say(f"registry document applied: {len(replies[-1].events)} change(s)")
        local = f"http://127.0.0.1:{args.port}"
        _wait_http(f"{local}/api/admin/tenants", admin_key, 60.0)     # registry and gateway both answer
        if args.demo:
            _wait_http(f"{local}/v1/models", demo_key, 30.0)         # the gateway knows the demo tenant
    except Stopping:
        raise
    except Exception as exc:  # noqa: BLE001 — tell the operator where to look
        say(f"start-up failed: {exc}; logs are in {data_dir / 'logs'}")
        return 1

    gateway = f"http://{args.host}:{args.port}"
    print(f"\nSwitchyard is up. Gateway: {gateway}  (OpenAI API at {gateway}/v1)", flush=True)
    print(f"  admin key: {_shown(admin_key, 'SWITCHYARD_ADMIN_KEY', generated)}", flush=True)
    if args.demo:
        print(f"  demo key:  {_shown(demo_key, 'SWITCHYARD_DEMO_KEY', generated)}", flush=True)
        print("  models:    llama3.2 (chat), nomic-embed-text (embeddings)", flush=True)
        print(f"\n  curl {gateway}/v1/chat/completions -H 'Authorization: Bearer <demo key>' \\\n"
              "       -H 'Content-Type: application/json' \\\n"
              "       -d '{\"model\": \"llama3.2\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'",
              flush=True)
    print(f"\n  services: {', '.join(f'{n} :{p}' for n, p in ports.items())}; logs in {data_dir / 'logs'}",
          flush=True)
    print("  Ctrl-C stops everything.\n", flush=True)
    supervisor.run_forever()
    return 0


class Stopping(Exception):
    """SIGINT or SIGTERM arrived: stop everything and exit 0."""


def _raise_stopping(signum: int, _frame: object) -> None:
    raise Stopping()


def _shown(key: str, env_name: str, generated: bool) -> str:
    if os.environ.get(env_name):
        return f"from ${env_name}"
    return key


async def _bootstrap(nats_url: str, commands: list[object]) -> list:
    from libs.kit import bootstrap, natsio

    nc = await natsio.connect(nats_url, "switchyard-up", 30.0)
    try:
        return await bootstrap.apply(nc, commands, timeout_s=60.0)  # type: ignore[arg-type]
    finally:
        await nc.close()


def _wait_http(url: str, key: str, timeout_s: float) -> None:
    """Poll a gateway URL with a key until it answers 200."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 — loopback only
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.2)


def say(text: str) -> None:
    print(f"switchyard: {text}", file=sys.stderr, flush=True)


# --- config ------------------------------------------------------------------------------------


def _problems_of(path: Path) -> tuple[dict | None, list]:
    from libs.kit import config_file

    doc, problems = config_file.load(path)
    if not problems:
        problems = config_file.validate(doc)
    return (None if problems else doc), problems


def config_validate(path: Path) -> int:
    """Print every problem of a config file with its path; 0 when there is none."""
    doc, problems = _problems_of(path)
    for problem in problems:
        print(f"{path}: {problem.path}: {problem.message}", flush=True)
    if problems:
        say(f"{path}: {len(problems)} problem(s)")
        return 1
    counts = ", ".join(f"{len(doc.get(k) or [])} {k}" for k in ("providers", "endpoints", "models", "tenants"))
    print(f"{path}: OK ({counts})", flush=True)
    return 0


def _load_config(path: Path) -> dict | None:
    doc, problems = _problems_of(path)
    for problem in problems:
        say(f"{path}: {problem.path}: {problem.message}")
    if problems:
        say(f"{path}: {len(problems)} problem(s); nothing started")
    return doc


# --- replay ------------------------------------------------------------------------------------


def replay(args: argparse.Namespace) -> int:
    from services.metering import replay as tool
    from services.metering.projections import PROJECTIONS
    from services.quota import replay as quota_tool

    if not (args.list or args.all or args.projection):
        say(f"name a projection ({', '.join(sorted([*PROJECTIONS, quota_tool.NAME]))}), or use --all or --list")
        return 2
    if args.projection == quota_tool.NAME and not (args.all or args.list):    # the counters in Valkey
        return asyncio.run(quota_tool.run(args.data_dir.absolute()))
    names = sorted(PROJECTIONS) if args.all else [args.projection] if args.projection else []
    code = asyncio.run(tool.run(names, args.data_dir.absolute(), list_only=args.list))
    if code == 0 and (args.all or args.list):
        code = asyncio.run(quota_tool.run(args.data_dir.absolute(), list_only=args.list))
    return code


# --- events ------------------------------------------------------------------------------------


def events_command(args: argparse.Namespace) -> int:
    from services.metering import eventtools

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


if __name__ == "__main__":
    sys.exit(main())
