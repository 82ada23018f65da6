"""What a command that could not reach its server or its file tells its operator: one line, never a traceback.

`main` hands every exception of a command here; what is the world's fault (a server refused or did not answer, a
URL that does not parse, a path that cannot be written) comes back as a line naming what failed and where, with
any password of a URL masked. Anything else is a bug, and `described` returns None so that it keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from switchyard_gateway.kit.settings import mask_password

SERVERS = {"asyncpg": ("PostgreSQL", "database_url"), "nats": ("NATS", "nats_url"),
           "valkey": ("Valkey", "redis_url")}
# the server a command reads when the exception does not tell (an OSError of the socket)
COMMAND_SERVER = {"events": "asyncpg", "replay": "asyncpg", "dead-letters": "nats"}


def described(exc: BaseException, args: argparse.Namespace | None) -> str | None:
    """The line that tells of `exc`, or None when it is not a failure of the world outside (a bug: let it show)."""
    family = type(exc).__module__.split(".", 1)[0]
    if family == "asyncpg" or (family == "nats" and _is_nats_error(exc)):
        return _at_server(family, exc, args)
    if isinstance(exc, OSError):
        if exc.filename is not None and not isinstance(exc, ConnectionError):
            where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
            return f"{_command(args)}{where}: {exc.strerror or exc}"
        text = str(exc)
        server = next((family for family, (label, _) in SERVERS.items() if text.startswith(label + " ")), None) \
            or _server_of(args)
        if server is not None:
            return _at_server(server, exc, args)
        return f"{_command(args)}{text or type(exc).__name__}"
    return None


def _is_nats_error(exc: BaseException) -> bool:
    """A NATS client's error (of the connection or the server's answer, not of our use of the client)."""
    import nats.errors

    return isinstance(exc, nats.errors.Error)


def _at_server(family: str, exc: BaseException, args: argparse.Namespace | None) -> str:
    """`<server> at <url>: why`, the URL's password masked (and any password of it scrubbed from the reason)."""
    label, setting = SERVERS[family]
    url = _url(setting, args)
    text = str(exc) or type(exc).__name__
    for secret in _passwords(url):
        text = text.replace(secret, "***")
    if text.startswith(f"{label} at "):              # our own clients' errors name where already
        return f"{_command(args)}{text}"
    shown = mask_password(url) if url and "://" in url else None     # not a URL: it may be anything, a password
    where = f"at {shown}" if shown else f"(SWITCHYARD_{setting.upper()})"
    if text.startswith(label + " "):                 # `PostgreSQL did not answer within 10 s: ...`
        return f"{_command(args)}{label} {where} {text[len(label) + 1:]}"
    return f"{_command(args)}{label} {where}: {text}"


def _server_of(args: argparse.Namespace | None) -> str | None:
    if args is None:
        return None
    if getattr(args, "events_command", None) == "dead-letters":
        return COMMAND_SERVER["dead-letters"]
    if getattr(args, "events_command", None) == "schema":
        return None
    return COMMAND_SERVER.get(getattr(args, "command", None) or "")


def _url(setting: str, args: argparse.Namespace | None) -> str | None:
    """The server's URL as the command found it (SWITCHYARD_<SETTING>, else the stack of --data-dir), if any."""
    url = os.environ.get(f"SWITCHYARD_{setting.upper()}")
    if url or args is None or not isinstance(getattr(args, "data_dir", None), Path):
        return url or None
    from switchyard_gateway.kit.stack import running_url

    try:
        return running_url(args.data_dir.absolute(), setting)
    except (SystemExit, Exception):     # noqa: BLE001 — no stack there: say the setting instead
        return None


def _passwords(url: str | None) -> list[str]:
    found = []
    for one in (url or "").split(","):
        try:
            password = urlsplit(one.strip()).password
        except ValueError:
            continue
        if password:
            found.append(password)
    return found


def _command(args: argparse.Namespace | None) -> str:
    if args is None or not getattr(args, "command", None):
        return ""
    sub = getattr(args, "events_command", None) or getattr(args, "config_command", None)
    return f"{args.command}{f' {sub}' if sub else ''}: "
