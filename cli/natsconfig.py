"""`switchyard nats-config`: write the users of a NATS run elsewhere (compose's nodes, an existing server) from
a subscribers file, the same configuration `switchyard up --nats-users` gives the NATS it runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from switchyard_gateway.cli.say import say
from switchyard_gateway.kit import nats_auth
from switchyard_gateway.kit.settings import url_list


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    command = sub.add_parser(
        "nats-config", help="write nats-server's users (the services' and subscribers') for a NATS run elsewhere",
        description="Write nats-server's `authorization` block: the services' user `switchyard` (may do anything) "
                    "with the password in --password-file, and each subscriber of --users allowed to replay the "
                    "event log and follow it, nothing else. With --routes, also the `cluster` block of a cluster's "
                    "nodes: they dial each other as user `route` with the same password, and refuse a route "
                    "without it. Start every node with `nats-server -c FILE` (and no --cluster/--routes flags, "
                    "which would clear the routes' authorization). The output holds the password: keep it secret.",
        epilog="example (compose.yaml): switchyard nats-config --users deploy/compose/nats-users.yaml "
               "--password-file secrets/nats_password --routes nats://nats-1:6222,nats://nats-2:6222,"
               "nats://nats-3:6222 --out secrets/nats_config",
    )
    command.add_argument("--users", type=Path, default=None, metavar="F",
                         help="subscribers (YAML: subscribers: [{user, password: ${ENV_VAR} or a bcrypt hash, name, "
                              "tenant}]; a ${ENV_VAR} is read from this command's environment, or from the file "
                              "ENV_VAR_FILE names); none: the services' user alone")
    command.add_argument("--password-file", type=Path, required=True, metavar="P",
                         help="the services' password (the file the services read as SWITCHYARD_NATS_PASSWORD_FILE)")
    command.add_argument("--routes", default="", metavar="URL,...",
                         help="the cluster's nodes as nats://HOST:PORT (every node, itself included; one port)")
    command.add_argument("--out", type=Path, default=None, metavar="PATH",
                         help="write there (mode 0600) instead of standard output")


def run(args: argparse.Namespace) -> int:
    try:
        password = _read_password(args.password_file)
        subscribers = nats_auth.load(args.users, os.environ) if args.users is not None else []
        text = nats_auth.server_config(password, subscribers)
        if args.routes:
            text += nats_auth.cluster_config(password, _routes(args.routes))
    except (nats_auth.UsersError, ValueError) as exc:
        say(f"cannot write the NATS users: {exc}")
        return 1
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        blocker = next((p for p in args.out.parents if p.exists() or p.is_symlink()), None)
        if blocker is not None and not blocker.is_dir():      # mkdir would say "File exists" of it
            say(f"cannot write {args.out}: {blocker} is not a directory")
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _write_anew(args.out, text)
    except OSError as exc:
        say(f"cannot write {args.out}: {exc.strerror or exc}")
        return 1
    say(f"wrote {args.out}: the services' user and {len(subscribers)} subscriber(s)"
        + (f", routes to {len(url_list(args.routes))} nodes" if args.routes else ""))
    return 0


def _write_anew(path: Path, text: str) -> None:
    """Write a new file, its owner's alone, in the place of whatever `path` was: never through a link there (root's
    password written into the file a link planted in a shared directory named) nor into a file another user made."""
    fresh = path.with_name(f".{path.name}.{os.getpid()}.new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(fresh, path)
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise


def _routes(text: str) -> list[str]:
    """--routes as URLs, each with a port that is one: the URL parser's error names no URL."""
    urls = url_list(text)
    for url in urls:
        try:
            urlsplit(url).port
        except ValueError:
            raise ValueError(f"--routes: {url!r} has a port outside 0-65535") from None
    return urls


MAX_PASSWORD_BYTES = 4096     # a password file larger is refused unread


def _read_password(path: Path) -> str:
    try:
        text = nats_auth.read_text(path, MAX_PASSWORD_BYTES)
    except nats_auth.UsersError as exc:
        raise ValueError(f"--password-file: cannot read {path}: {exc}") from None
    password = text[:-1] if text.endswith("\n") else text
    if len(password) < nats_auth.MIN_PASSWORD:
        raise ValueError(f"--password-file: {path} holds {len(password)} characters; give at least "
                         f"{nats_auth.MIN_PASSWORD} (openssl rand -hex 24 > FILE)")
    return password
