"""`switchyard up`: start the infrastructure and every service, supervise them, stop them all on a signal."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from switchyard_gateway.cli import config as config_command
from switchyard_gateway.cli.reload_users import UsersReload
from switchyard_gateway.cli.say import say
from switchyard_gateway.kit import nats_auth, ports
from switchyard_gateway.kit.settings import (
    FILE_SUFFIX, SettingsError, env_value, mask_password, url_list, with_password,
)
from switchyard_gateway.kit.stack import StackUrls
from switchyard_gateway.kit.stack_proc import LOOPBACK, become_subreaper
from switchyard_gateway.kit.supervisor import UPSTREAMS, Command, Supervisor

SERVICES = ("registry", "metering", "router", "quota", "gateway")   # start order
SIMULATORS = ("sim-ollama", "sim-openai")                           # --demo's upstreams
MAX_REPLICAS = 8
MAX_WORKERS = 64
T = TypeVar("T")


def replica_counts(spec: str) -> dict[str, int]:
    """`gateway=2,metering=2` as {service: copies}; every service not named runs once."""
    counts = dict.fromkeys(SERVICES, 1)
    for part in filter(None, (piece.strip() for piece in spec.split(","))):
        name, sep, number = part.partition("=")
        if not sep or name.strip() not in SERVICES:
            raise ValueError(f"--replicas: {part!r} is not SERVICE=N with SERVICE one of {', '.join(SERVICES)}")
        if not number.strip().isdigit() or not 1 <= int(number) <= MAX_REPLICAS:
            raise ValueError(f"--replicas: {part!r}: N must be a whole number from 1 to {MAX_REPLICAS}")
        counts[name.strip()] = int(number)
    return counts


def unit_names(counts: dict[str, int]) -> dict[str, list[str]]:
    """Each service's supervised units: its own name when it runs once, `<name>-<n>` for each replica."""
    return {name: [name] if counts[name] == 1 else [f"{name}-{n}" for n in range(1, counts[name] + 1)]
            for name in SERVICES}


def gateway_workers(asked: int, replicas: int) -> int:
    """Workers per gateway: as asked, else the machine's cores shared among the replicas (at least one each)."""
    if asked > 0:
        return asked
    from switchyard_gateway.kit.serve import worker_count
    return max(1, worker_count(0) // replicas)


def port_number(text: str) -> int:
    """A TCP port to listen on: 1-65535 (0 would let the kernel choose one nobody is told of)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port from 1 to 65535")
    return value


def listen_address(text: str) -> str:
    """An address of this machine to listen on, checked by binding it (a mistyped or foreign address was reported
    as the port being in use; an empty one listened on every interface)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty address listens on every interface: name one (0.0.0.0 for all)")
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((text, 0))
    except (OSError, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise argparse.ArgumentTypeError(f"cannot listen on {text!r}: {reason}") from None
    return text


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser(
        "up", help="run the whole system on this machine",
        description="Start NATS, PostgreSQL and Valkey from their pip-installed binaries (unless "
                    "SWITCHYARD_NATS_URL, SWITCHYARD_DATABASE_URL or SWITCHYARD_REDIS_URL point at running "
                    "ones), each asking for a password kept in the data dir, then every service as its own "
                    "process; restart a service that crashes; stop "
                    "everything on Ctrl-C or SIGTERM (SIGHUP reads --nats-users again).",
    )
    up.add_argument("--data-dir", type=Path, default=Path("./.switchyard"),
                    help="where data, logs and the spool live (default: ./.switchyard); a second `up` keeps it")
    up.add_argument("--host", type=listen_address, default="127.0.0.1",
                    help="gateway listen address (default: 127.0.0.1; 0.0.0.0 for every interface)")
    up.add_argument("--port", type=port_number, default=8080, help="gateway port, 1-65535 (default: 8080)")
    up.add_argument("--demo", action="store_true",
                    help="also start two simulated upstreams (Ollama-style and OpenAI-style) and a demo "
                         "tenant 'demo' serving llama3.2 and nomic-embed-text")
    up.add_argument("--no-fsync", action="store_true",
                    help="run the embedded PostgreSQL and Valkey without fsync (faster; for benchmarks and tests): "
                         "nothing is lost when a process dies, recent writes may be when the machine does")
    up.add_argument("--config", type=config_command.named_file, default=None,
                    help="a registry document (providers, endpoints, models, tenants) applied at start as "
                         "registry commands; applying it again changes nothing (default: ./switchyard.yaml "
                         "if present)")
    up.add_argument("--replicas", default="", metavar="SERVICE=N,...",
                    help="run N copies of some services, e.g. gateway=2,metering=2,quota=2,router=2,registry=2; "
                         "gateway replicas share the gateway's port (the kernel spreads connections), the others "
                         "get a port each")
    up.add_argument("--gateway-workers", type=int, default=None, metavar="N",
                    help="worker processes per gateway, sharing its port (default: SWITCHYARD_WORKERS, else one per "
                         "core, divided among gateway replicas); each has its own journal and event-fed state")
    up.add_argument("--nats-cluster", type=int, default=1, metavar="N",
                    help="run NATS as a cluster of N nodes (3 to 9) on loopback, every stream kept on 3 of them "
                         "(default: 1, a single server)")
    up.add_argument("--nats-users", type=Path, default=None, metavar="F",
                    help="subscribers allowed to replay the event log and follow it, each a NATS user with only "
                         "that permission (YAML: subscribers: [{user, password: ${ENV_VAR} or a bcrypt hash, name, "
                         "tenant}]); beside the services' own user, whose password is kept in keys.env (NATS always "
                         "asks for a user). SIGHUP to `up` reads F again and has NATS take it without a restart (a "
                         "file with a problem changes nothing, and `up` says why): to change a password then, give "
                         "it as a bcrypt hash, since ${ENV_VAR} is read from `up`'s environment, fixed at start")
    up.add_argument("--journal-fsync", action="store_true",
                    help="fdatasync the gateways' journals batch by batch: no accepted call is lost even when the "
                         "machine crashes (a crash of a process loses nothing without it)")

# what `up` hands the services unless given, in remembered_keys' order (read before anything starts)
GIVEN_SECRETS = ("SWITCHYARD_ADMIN_KEY", "SWITCHYARD_DEMO_KEY", "SWITCHYARD_JWT_SECRET")
# the settings other gateways read without a prefix, and what Switchyard reads for them
SEED_SETTINGS = {"AUTH_MODE": "SWITCHYARD_AUTH_MODE", "SINGLE_USER_API_KEY": "SWITCHYARD_API_KEY",
                 "JWT_SECRET_KEY": "SWITCHYARD_JWT_SECRET", "REDIS_URL": "SWITCHYARD_REDIS_URL",
                 "REDIS_ADDR": "SWITCHYARD_REDIS_URL", "DATABASE_URL": "SWITCHYARD_DATABASE_URL",
                 "LOG_LEVEL": "SWITCHYARD_LOG_LEVEL"}


def seed_spellings(env: Mapping[str, str]) -> list[str]:
    """A note for each setting given as another gateway spells it (and not as ours): set, and not read."""
    return [f"note: {theirs} is set, but Switchyard reads {ours} (it takes the same values); {theirs} is ignored"
            for theirs, ours in SEED_SETTINGS.items() if env.get(theirs) and not env.get(ours)
            and not env.get(ours + "_FILE")]


def run(args: argparse.Namespace) -> int:
    from switchyard_gateway.kit.stack import EmbeddedStack, StackError, lock_data_dir

    config_path = args.config or (Path("switchyard.yaml") if Path("switchyard.yaml").exists() else None)
    args.registry_doc = None
    if config_path is not None:
        args.registry_doc = config_command.load(config_path)
        if args.registry_doc is None:
            return 1
    data_dir: Path = args.data_dir.absolute()
    os.umask(0o077)                 # what the stack writes (Valkey's files, logs, journals) is its owner's alone
    foreign = _not_a_data_dir(data_dir)
    if foreign:                     # `up` takes its data dir from other users: never a folder of other things
        say(f"cannot start: {data_dir} holds folders of other things ({foreign}) and no Switchyard data (no "
            f"{' or '.join(MARKS)}); give --data-dir a new or empty directory, or one an earlier `up` made")
        return 1
    try:
        locked = lock_data_dir(data_dir)                 # before anything there changes: it may be another's stack
        strangers = _owner_only(data_dir)
    except StackError as exc:
        say(f"cannot start: {exc}")
        return 1
    except OSError as exc:
        say(f"cannot start: the data directory {data_dir} cannot be made: {exc.strerror or exc}")
        return 1
    if strangers:                   # its owner could read the keys and passwords written there, or swap them
        say(f"cannot start: {strangers[0]} in the data directory belongs to another user (uid "
            f"{strangers[0].lstat().st_uid}); use a data directory of your own")
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM):       # Ctrl-C or SIGTERM at any point stops cleanly
        signal.signal(signum, _raise_stopping)
    reload = UsersReload(args.nats_users, os.environ)    # SIGHUP reads --nats-users again; it never stops `up`
    signal.signal(signal.SIGHUP, reload.on_signal)
    become_subreaper()                                   # orphans of our children are ours to see and reap
    for line in seed_spellings(os.environ):
        say(line)
    try:
        external = _external_urls(os.environ)
        _check_auth(args, os.environ)
        args.given = {name: env_value(os.environ, name) for name in GIVEN_SECRETS}    # their files read now
        args.units = unit_names(replica_counts(args.replicas))
        if args.gateway_workers is None:              # the flag first, else the services' own setting
            workers = env_value(os.environ, "SWITCHYARD_WORKERS") or "0"
            if not workers.strip().isdigit():
                raise SettingsError(f"SWITCHYARD_WORKERS must be a whole number, not {workers!r}")
            args.gateway_workers = int(workers)
        if not 0 <= args.gateway_workers <= MAX_WORKERS:
            raise ValueError(f"--gateway-workers: {args.gateway_workers}: N must be a whole number from 1 to "
                             f"{MAX_WORKERS} (or 0: one per core)")
        if args.nats_cluster != 1 and external["nats_url"]:
            raise SettingsError("--nats-cluster runs NATS here, but SWITCHYARD_NATS_URL points at a running one")
        if args.nats_users is not None and external["nats_url"]:
            raise SettingsError("--nats-users configures the NATS run here, but SWITCHYARD_NATS_URL points at a "
                                "running one (give that server the users: docs/architecture.md)")
        subscribers = _subscribers(args.nats_users) if args.nats_users is not None else []
        stack = EmbeddedStack(data_dir, **external, durable=not args.no_fsync, nats_nodes=args.nats_cluster,
                              ports={"gateway": args.port}, nats_users=subscribers,
                              nats_password=None if external["nats_url"] else _services_password(data_dir),
                              locked=locked)
    except (SettingsError, ValueError, StackError) as exc:
        say(f"cannot start: {exc}")
        return 1
    ported = [unit for name, units in args.units.items() if name != "gateway" for unit in units]
    supervisor = Supervisor()
    try:
        try:
            planned = stack.plan(also=("gateway", *ported, *(SIMULATORS if args.demo else ())))
            ports.check_free({name: (args.host if name == "gateway" else LOOPBACK, port)
                              for name, port in planned.items()})
        except StackError as exc:
            stack.stop()
            say(f"cannot start: {exc}")
            return 1
        say(f"starting NATS, PostgreSQL and Valkey under {data_dir} ...")
        try:
            urls = stack.start()
        except StackError as exc:
            say(f"could not start the embedded stack: {exc}")
            return 1
        for unit in stack.units():
            supervisor.add(unit, running=unit.process)
        reload.serving(stack, subscribers)
        return _run_services(args, data_dir, urls, planned, supervisor)
    except Stopping:
        return 0
    finally:
        # a second Ctrl-C must not cut the clean-up short, nor a SIGHUP reload what is stopping
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        reload.close()
        if stack.ports:                                  # something was started (a refusal started nothing)
            started = time.monotonic()
            supervisor.stop()
            stack.stop()
            say(f"stopped in {time.monotonic() - started:.1f} s")


def _run_services(args: argparse.Namespace, data_dir: Path, urls: StackUrls, planned: dict[str, int],
                  supervisor: Supervisor) -> int:
    from switchyard_gateway.cli import bootstrap as boot

    admin_key, demo_key, jwt_secret, generated = boot.remembered_keys(data_dir / "keys.env", *args.given.values())
    common = {
        "SWITCHYARD_NATS_URL": urls.nats_url,          # with the services' user in it when NATS runs here
        "SWITCHYARD_DATABASE_URL": urls.database_url,
        "SWITCHYARD_REDIS_URL": urls.redis_url,
        "SWITCHYARD_SPOOL_DIR": str(data_dir / "spool"),
        "SWITCHYARD_STREAM_REPLICAS": str(min(3, args.nats_cluster)),
    }
    if args.journal_fsync:
        common["SWITCHYARD_JOURNAL_FSYNC"] = "true"
    logs = data_dir / "logs"
    for name in SERVICES:
        for unit in args.units[name]:
            own = {"SWITCHYARD_HOST": LOOPBACK, "SWITCHYARD_PORT": str(planned[unit if name != "gateway" else name])}
            if unit != name:
                own["SWITCHYARD_INSTANCE"] = unit
            if name == "gateway":
                own["SWITCHYARD_HOST"] = args.host
                own["SWITCHYARD_WORKERS"] = str(gateway_workers(args.gateway_workers, len(args.units[name])))
                if len(args.units[name]) > 1:       # replicas share the public port on purpose, with each other only
                    own["SWITCHYARD_SHARE_PORT_WITH"] = str(os.getpid())
            if name == "registry":
                own["SWITCHYARD_ADMIN_KEY"] = admin_key     # the registry issues it (idempotently) at start
            if name == "gateway":
                own["SWITCHYARD_JWT_SECRET"] = jwt_secret   # signs sign-in's tokens (and checks outside JWTs)
            env = _service_env({**common, **own})
            supervisor.add(Command(unit, [sys.executable, "-m", f"switchyard_gateway.services.{name}"], env,
                                   logs / f"{unit}.log"))
    if args.demo:
        for name in SIMULATORS:
            supervisor.add(Command(name, [sys.executable, "-m", "switchyard_gateway.simulator", "--host", LOOPBACK,
                                          "--port", str(planned[name])], dict(os.environ), logs / f"{name}.log",
                                  tier=UPSTREAMS))

    commands = []
    if args.demo:
        commands += boot.demo_commands(f"http://127.0.0.1:{planned['sim-ollama']}",
                                       f"http://127.0.0.1:{planned['sim-openai']}", demo_key)
    if args.registry_doc is not None:
        commands.append(boot.config_command(args.registry_doc))
    local = f"http://127.0.0.1:{args.port}"
    gateway_at = (args.host, args.port)
    try:
        if commands:
            replies = _supervising(supervisor, gateway_at, lambda: asyncio.run(_bootstrap(urls.nats_url, commands)))
            if args.registry_doc is not None:
                summary = replies[-1].summary
                say(f"registry document applied: {summary.events if summary else len(replies[-1].events)} change(s)")
        _supervising(supervisor, gateway_at, lambda: _wait_http(f"{local}/api/admin/tenants", admin_key, 60.0,
                                                                     "SWITCHYARD_ADMIN_KEY"))
        expected = {name: len(units) for name, units in args.units.items()}   # every service, not the gateway alone
        _supervising(supervisor, gateway_at, lambda: _wait_instances(local, admin_key, expected, 60.0))
        if args.demo:
            _supervising(supervisor, gateway_at, lambda: _wait_http(f"{local}/v1/models", demo_key, 30.0,
                                                                         "SWITCHYARD_DEMO_KEY"))
    except Stopping:
        raise
    except Exception as exc:  # noqa: BLE001 — tell the operator where to look
        say(f"start-up failed: {exc}; logs are in {logs}")
        return 1

    gateway = f"http://{args.host}:{args.port}"
    print(f"\nSwitchyard is up. Gateway: {gateway}  (OpenAI API at {gateway}/v1)", flush=True)
    print(f"  console:   {gateway}/ui  (sign in with a key)", flush=True)
    keys_file = data_dir / "keys.env"
    print(f"  admin key: {_shown(admin_key, 'SWITCHYARD_ADMIN_KEY', generated, keys_file)}", flush=True)
    if args.demo:
        print(f"  demo key:  {_shown(demo_key, 'SWITCHYARD_DEMO_KEY', generated, keys_file)}", flush=True)
        print("  models:    llama3.2 (chat), nomic-embed-text (embeddings)", flush=True)
        print(f"\n  curl {gateway}/v1/chat/completions -H 'Authorization: Bearer <demo key>' \\\n"
              "       -H 'Content-Type: application/json' \\\n"
              "       -d '{\"model\": \"llama3.2\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'",
              flush=True)
    shown = [f"{unit} :{planned[unit if name != 'gateway' else name]}" for name in SERVICES for unit in args.units[name]]
    print(f"\n  services: {', '.join(shown)}; logs in {logs}", flush=True)
    if args.nats_cluster > 1:
        print(f"  NATS: a cluster of {args.nats_cluster} nodes ({mask_password(urls.nats_url)}), every stream on 3 "
              "of them", flush=True)
    if args.nats_users is not None:
        # the URL the services were given, without their user: the ports stack.json keeps (ports.nats)
        print(f"  subscribers connect to {nats_auth.without_user(urls.nats_url)}, each as its user of "
              f"{args.nats_users} (nats://USER:PASSWORD@...; the port is kept in {data_dir / 'stack.json'})",
              flush=True)
    print("  Ctrl-C stops everything.\n", flush=True)
    supervisor.run_forever()
    return 0


def _supervising(supervisor: Supervisor, gateway: tuple[str, int], step: Callable[[], T]) -> T:
    """Run a blocking start-up step in a helper thread while this one keeps supervising.

    A gateway (any replica) that exits because its port is taken ends the start-up at once, naming the holder.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = step()
        except BaseException as exc:  # noqa: BLE001 — handed to the supervising thread
            outcome["error"] = exc

    helper = threading.Thread(target=target, name="up-step", daemon=True)
    helper.start()
    while helper.is_alive():
        helper.join(0.25)
        supervisor.poll()
        if any(watch.history[-1:] == [ports.PORT_IN_USE_EXIT] for name, watch in supervisor.watches.items()
               if name == "gateway" or name.startswith("gateway-")):
            host, port = gateway
            raise ports.PortInUse(port, "gateway", host, ports.holder(port))
        for name, watch in supervisor.watches.items():
            refusal = _refusal(watch.unit.log_path) if watch.history[-1:] not in ([], [0]) else None
            if refusal is not None:          # a setting it refuses: every restart would say the same
                raise StartRefused(f"{name} refuses to start: {refusal}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class StartRefused(Exception):
    """A service stopped at start naming what it refuses (a setting, its port): restarting it cannot help."""


def _refusal(log_path: Path) -> str | None:
    """The one line a service that refuses to start ends its log with (`switchyard: ...`), if that is how it ended."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return last.removeprefix("switchyard: ") if last.startswith("switchyard: ") else None


class Stopping(Exception):
    """SIGINT or SIGTERM arrived: stop everything and exit 0."""


def _raise_stopping(signum: int, _frame: object) -> None:
    raise Stopping()


def _shown(key: str, env_name: str, generated: bool, keys_file: Path) -> str:
    """How the banner names a key: printed once, when it was just made; afterwards where it is kept, so that the
    output of every later start (often a service manager's log) holds no secret."""
    for name in (env_name, env_name + FILE_SUFFIX):
        if os.environ.get(name):
            return f"from ${name}"
    return key if generated else f"{env_name} in {keys_file} (printed when it was made)"


def _check_auth(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """SettingsError, before anything starts, for an auth set-up the gateway would refuse or `up` could never use:
    a JWT secret too short to be safe, or single-user mode (which accepts only SWITCHYARD_API_KEY) with a demo
    tenant's key or an admin key of another value."""
    from switchyard_gateway.services.gateway.settings import jwt_secret_problem

    mode = (env_value(env, "SWITCHYARD_AUTH_MODE") or "").strip().lower().replace("_", "-")
    if mode != "single-user":
        problem = jwt_secret_problem(env_value(env, "SWITCHYARD_JWT_SECRET") or "")
        if problem:
            raise SettingsError(problem)
        return
    if args.demo:
        raise SettingsError("--demo makes a demo tenant with a key of its own, and single-user mode "
                            "(SWITCHYARD_AUTH_MODE=single-user) accepts only SWITCHYARD_API_KEY: run --demo in "
                            "multi-tenant mode, or single-user mode without --demo")
    api_key = env_value(env, "SWITCHYARD_API_KEY") or ""
    if env_value(env, "SWITCHYARD_ADMIN_KEY") != api_key or not api_key:
        raise SettingsError("single-user mode (SWITCHYARD_AUTH_MODE=single-user) accepts only SWITCHYARD_API_KEY: "
                            "set it, and give SWITCHYARD_ADMIN_KEY the same value")


def _external_urls(env: Mapping[str, str]) -> dict[str, str | None]:
    """The NATS, PostgreSQL and Valkey URLs given in the environment (or in files it names), if any."""
    from switchyard_gateway import resp

    database_url = env_value(env, "SWITCHYARD_DATABASE_URL")
    password = env_value(env, "SWITCHYARD_DATABASE_PASSWORD")
    if database_url and urlsplit(database_url).scheme not in ("postgresql", "postgres"):
        raise SettingsError("SWITCHYARD_DATABASE_URL must be a postgresql:// URL, not "
                            f"{mask_password(database_url)!r}")
    if database_url and password:
        database_url = with_password(database_url, password)
    redis_url = env_value(env, "SWITCHYARD_REDIS_URL")
    if redis_url:
        try:
            resp.Address(redis_url)
        except ValueError as exc:
            raise SettingsError(f"SWITCHYARD_REDIS_URL: {exc}") from None
    nats_url = env_value(env, "SWITCHYARD_NATS_URL")
    if nats_url:
        url_list(nats_url)                    # SettingsError when it names no server
    return {"nats_url": nats_url, "database_url": database_url, "redis_url": redis_url}


MARKS = ("stack.json", "keys.env", "stack.lock")     # what every data dir an `up` made holds from its first start


def _not_a_data_dir(data_dir: Path) -> str:
    """A few names of the folders an existing directory no `up` made holds (empty when it is new, holds files only,
    as a data dir may before its first start: `up > D/up.log`, a `--nats-users` file, or is a data dir). `up` would
    take everything in it from the other users (`_owner_only`): a tree of other things (a project, a home, /tmp) is
    refused."""
    try:
        entries = sorted(os.scandir(data_dir), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return ""                   # made, or refused where it is made (naming the file)
    if any(entry.name in MARKS for entry in entries):
        return ""
    folders = [entry.name for entry in entries if entry.is_dir()]
    shown = ", ".join(folders[:3])
    return shown + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")


def _owner_only(data_dir: Path) -> list[Path]:
    """Take from other users what an older `up` left readable in the data dir (Valkey's files hold the quota's
    counters and cached answers; logs name tenants and keys). PostgreSQL's cluster is its own (it keeps it 0700).
    Return what in it belongs to another user (the data dir first): none of it is touched then."""
    me = os.geteuid()
    strangers = [path for path in _entries(data_dir) if path.lstat().st_uid != me]
    if strangers:
        return strangers
    for path in _entries(data_dir):
        mode = path.lstat().st_mode
        taken = 0o076 if path == data_dir else 0o077     # the data dir may keep o+x: PostgreSQL's user (`up` as
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & taken:          # root) passes through it, and only that
            path.chmod(stat.S_IMODE(mode) & ~taken)
    return []


def _entries(data_dir: Path) -> Iterator[Path]:
    """The data dir and everything in it but PostgreSQL's cluster directory (its own user's when we are root)."""
    yield data_dir
    for root, dirs, files in os.walk(data_dir):
        if Path(root) == data_dir and "pg" in dirs:
            dirs.remove("pg")
        for name in dirs + files:
            yield Path(root, name)


def _subscribers(path: Path) -> list[nats_auth.SubscriberUser]:
    """The subscribers a `--nats-users` file lists, each a NATS user that may replay and follow the log."""
    try:
        return nats_auth.load(path, os.environ)
    except nats_auth.UsersError as exc:
        raise SettingsError(str(exc)) from None


def _services_password(data_dir: Path) -> str:
    """The password of the services' NATS user, kept in keys.env: NATS asks every client for a user, so that no other
    program of the machine can act as a service (issue itself an admin key through the registry's subject)."""
    from switchyard_gateway.cli import bootstrap as boot

    return boot.remembered_secret(data_dir / "keys.env", nats_auth.PASSWORD_KEY)


def _service_env(values: dict[str, str]) -> dict[str, str]:
    """Our environment with `values` set, and the _FILE twin of each dropped (a value and a file clash)."""
    env = {**os.environ, **values}
    for name in values:
        env.pop(name + FILE_SUFFIX, None)
    return env


async def _bootstrap(nats_url: str, commands: list[object]) -> list:
    from switchyard_gateway.kit import natsio
    from switchyard_gateway.cli import bootstrap

    nc = await natsio.connect(nats_url, "switchyard-up", 30.0)
    try:
        return await bootstrap.apply(nc, commands, timeout_s=60.0)  # type: ignore[arg-type]
    finally:
        await nc.close()


def _wait_instances(gateway: str, key: str, expected: dict[str, int], timeout_s: float) -> None:
    """Poll the gateway's /health until every replica of every service answers there."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{gateway}/health", headers={"Authorization": f"Bearer {key}"})
    counts: dict[str, int] = {}
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 — loopback only
                body = response.read()
        except urllib.error.HTTPError as exc:            # 503: an endpoint or a service is not healthy yet
            body = exc.read()
        except OSError:
            body = b"{}"
        try:
            services = json.loads(body).get("services", {})
            counts = {name: int(services.get(name, {}).get("instances", 0)) for name in expected}
        except (ValueError, AttributeError):
            counts = {}
        if counts and all(counts[name] >= number for name, number in expected.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every replica answered within {timeout_s:.0f} s: {counts} of {expected}")
        time.sleep(0.2)


REFUSED_FOR_S = 10.0    # a key the gateway refuses (401) this long after it first answered was revoked


def _wait_http(url: str, key: str, timeout_s: float, setting: str) -> None:
    """Poll a gateway URL with a key until it answers 200; a key it keeps refusing (401 for REFUSED_FOR_S: the
    registry issues `up`'s keys within a second of its start) was revoked, and `setting` names a new one."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    refused_since: float | None = None
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310 — loopback only
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                refused_since = None
            elif refused_since is None:
                refused_since = time.monotonic()
            elif time.monotonic() - refused_since > REFUSED_FOR_S:
                raise RuntimeError(f"the gateway refuses the key in {setting} (it was revoked): set {setting} to a "
                                   f"new key, which is issued at start") from None
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")
        time.sleep(0.2)

