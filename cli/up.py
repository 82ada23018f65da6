"""`switchyard up`: start the infrastructure and every service, supervise them, stop them all on a signal."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

from switchyard_gateway.cli import config as config_command
from switchyard_gateway.cli.say import say
from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.kit.supervisor import Supervisor

SERVICES = ("registry", "metering", "router", "quota", "gateway")   # start order; stop runs reversed


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
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

def run(args: argparse.Namespace) -> int:
    from switchyard_gateway.kit.stack import EmbeddedStack, StackError

    config_path = args.config or (Path("switchyard.yaml") if Path("switchyard.yaml").exists() else None)
    args.registry_doc = None
    if config_path is not None:
        args.registry_doc = config_command.load(config_path)
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
    from switchyard_gateway.cli import bootstrap as boot

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
        supervisor.add(name, [sys.executable, "-m", f"switchyard_gateway.services.{name}"], env)
    sims: dict[str, int] = {}
    if args.demo:
        for name in ("sim-ollama", "sim-openai"):
            sims[name] = pick_free_port(taken)
            taken.add(sims[name])
            supervisor.add(name, [sys.executable, "-m", "switchyard_gateway.simulator", "--host", "127.0.0.1",
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
    print(f"  console:   {gateway}/ui  (sign in with a key)", flush=True)
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
    from switchyard_gateway.kit import natsio
    from switchyard_gateway.cli import bootstrap

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

