"""Who may do what on Switchyard's NATS: the services' own user, and subscribers allowed to replay the log and follow it.

    users = load(Path("nats-users.yaml"), os.environ)       # subscribers; plain-text passwords are refused
    text = server_config(services_password, users)           # nats-server's `authorization` block
    text += cluster_config(services_password, routes)        # and, for a cluster's nodes, routes that ask for a user

A subscriber's allow lists are exactly what `switchyard_gateway.subscribe` uses: ask metering through its own door,
`metering.subscriber.v1.<user>.<name>.<tenant>.<op>` (any tenant's token for a user of every tenant), for pages of
the log, consumers of LOG and of its own retries, and its dead letters stored; and read its own inbox
(`_INBOX_<user>`, so that no user reads another's replies). Anything else it publishes or subscribes to is
refused by the server, whatever the client asks.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit.settings import SettingsError, env_value

SERVICES_USER = "switchyard"
ROUTE_USER = "route"                           # what one node of a cluster presents to another
CLUSTER_NAME = "switchyard"                    # of the NATS cluster `up --nats-cluster` runs
PASSWORD_KEY = "SWITCHYARD_NATS_PASSWORD"      # the services' password, kept in the data dir's keys.env
USER = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")       # a user's name, and a subscriber's
# the services' names: their consumers set events aside under them (`metering`, `quota`) or under names that begin
# with them (`gateway:REGISTRY`, `router:ROUTING`, `registry.outbox`), with message ids that begin so too; a
# subscriber's dead letters are its name's alone, so it may take none of these
RESERVED_NAMES = frozenset({subjects.CONSUMER_METERING, subjects.CONSUMER_QUOTA, "gateway", "router", "registry"})
TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{1,49}\Z")
ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}\Z")
BCRYPT = re.compile(r"^\$2[abxy]\$[0-9]{2}\$[./A-Za-z0-9]{53}\Z")   # whole: nats-server compares anything else as it is
MIN_PASSWORD = 16                              # characters of a password given for the services or the routes


class UsersError(ValueError):
    """A users file that cannot be used, with every problem it has."""


@dataclass(frozen=True)
class SubscriberUser:
    """A NATS user that runs one subscriber: every tenant's events, or one tenant's."""

    user: str
    password: str           # as nats-server takes it: a bcrypt hash ($2a$...), or the value of an environment variable
    name: str               # the subscriber's name: the only dead letters and retries it may touch
    tenant: str | None = None

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.user)


def inbox_prefix(user: str) -> str:
    """The inbox prefix a user's client must connect with (`nats.connect(inbox_prefix=...)`); the services' user
    keeps nats-py's own (it may read any inbox)."""
    return "_INBOX" if user == SERVICES_USER else f"_INBOX_{user}"


def permissions(sub: SubscriberUser) -> dict[str, dict[str, list[str]]]:
    """The publish and subscribe allow lists of a subscriber's user: its own door to metering (every tenant's, or
    its tenant's) and its own inbox. Nothing of JetStream's API and no stream's subject: NATS permissions see only
    subjects, and JetStream answers on any reply subject a request names (services/metering/door.py)."""
    scope = sub.tenant or "*"
    door = f"{subjects.METERING_SUBSCRIBER}.{sub.user}.{sub.name}.{scope}.*"
    return {"publish": {"allow": [door]}, "subscribe": {"allow": [f"{sub.inbox}.>"]}}


def server_config(services_password: str, subscribers: list[SubscriberUser]) -> str:
    """nats-server's `authorization` block: the services' user may do anything, each subscriber what it needs."""
    users: list[dict[str, object]] = [{"user": SERVICES_USER, "password": services_password}]
    users += [{"user": s.user, "password": s.password, "permissions": permissions(s)} for s in subscribers]
    return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


def cluster_config(password: str, routes: list[str], name: str = CLUSTER_NAME,
                   listen: str | None = None) -> str:
    """nats-server's `cluster` block for nodes that ask each other for a user: each listens on the routes' port
    (or where `listen` says: nodes of one machine, each on a port of its own) and dials every route (itself
    included: a node knows itself and drops that one) as `route` with `password`.

    Give the cluster here rather than with `--cluster`/`--routes` flags: nats-server's `--cluster` flag clears the
    routes' authorization of a configuration file."""
    parsed = [urlsplit(url if "://" in url else f"nats://{url}") for url in routes]
    ports = {p.port for p in parsed}
    if not parsed or None in ports or len(ports) != 1 and listen is None or any(p.username for p in parsed):
        raise UsersError(f"routes {','.join(routes)!r}: give each node as nats://HOST:PORT, every one on the same "
                         "port and without a user")
    dial = [urlunsplit(p._replace(netloc=f"{ROUTE_USER}:{quote(password, safe='')}@{p.netloc}")) for p in parsed]
    block = {"name": name, "listen": listen or f"0.0.0.0:{ports.pop()}",
             "authorization": {"user": ROUTE_USER, "password": password}, "routes": dial}
    return "cluster " + json.dumps(block, indent=2) + "\n"


def load(path: Path, env: Mapping[str, str]) -> list[SubscriberUser]:
    """The subscribers of a users file (YAML: `subscribers: [{user, password, name, tenant?}]`); passwords are
    `${ENV_VAR}` (read from `env`, or the file `ENV_VAR_FILE` names) or bcrypt hashes, never plain text.
    Raises UsersError naming every problem."""
    try:
        document = yaml.safe_load(read_text(path, MAX_USERS_BYTES)) or {}
    except UsersError as exc:
        raise UsersError(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsersError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    entries = document.get("subscribers") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise UsersError(f"{path}: expected `subscribers:`, a list of {{user, password, name, tenant}}")
    problems, found = [], []
    for i, entry in enumerate(entries):
        where = f"subscribers[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        unknown = set(entry) - {"user", "password", "name", "tenant"}
        user, name, tenant = str(entry.get("user", "")), str(entry.get("name", "")), entry.get("tenant")
        password = _password(entry.get("password"), env)
        problems += [f"{where}: unknown key {key!r}" for key in sorted(unknown)]
        if not USER.match(user) or user == SERVICES_USER:
            problems.append(f"{where}.user: 1 to 64 of A-Z a-z 0-9 _ -, and not {SERVICES_USER!r}")
        if not USER.match(name) or name in RESERVED_NAMES:
            problems.append(f"{where}.name: the subscriber's name, 1 to 64 of A-Z a-z 0-9 _ -, and not a service's "
                            f"own consumer ({', '.join(sorted(RESERVED_NAMES))})")
        if tenant is not None and not TENANT.match(str(tenant)):
            problems.append(f"{where}.tenant: not a tenant id")
        if isinstance(password, str) and password.startswith("!"):
            problems.append(f"{where}.password: {password[1:]}")
        found.append(SubscriberUser(user, str(password), name, str(tenant) if tenant is not None else None))
    users, names = [u.user for u in found], [u.name for u in found]
    problems += [f"user {u!r} appears twice" for u in sorted({u for u in users if users.count(u) > 1})]
    problems += [f"name {n!r} appears twice: a name's dead letters and retries are one subscriber's"
                 for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise UsersError(f"{path}: " + "; ".join(problems))
    return found


MAX_USERS_BYTES = 1024 * 1024      # a users file larger is refused unread
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}


def read_text(path: Path, limit: int) -> str:
    """A regular file's UTF-8 text of at most `limit` bytes. Raises UsersError saying why not: no file, not a
    regular file (a FIFO would block the read for ever, /dev/zero never end it), larger, or not UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)     # a FIFO opens at once, and is then refused
    except OSError as exc:
        raise UsersError(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsersError(f"it is {_KINDS.get(stat.S_IFMT(mode), 'of another kind')}, not a regular file")
        os.set_blocking(fd, True)
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise UsersError(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UsersError(f"larger than {_size(limit)}")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise UsersError(f"not UTF-8 text (an invalid byte at offset {exc.start})") from None


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


def _password(value: object, env: Mapping[str, str]) -> str:
    """The password nats-server is given, or `!why` when there is none to give."""
    text = str(value or "")
    ref = ENV_REF.match(text)
    if ref:                                    # the variable, or the file its _FILE twin names (a mounted secret)
        try:
            given = env_value(env, ref.group(1))
        except SettingsError as exc:
            return f"!{exc}"
        if not given:
            return f"!{ref.group(1)} is not set"
        if len(given) < MIN_PASSWORD:          # as the services' own: a subscriber's is as exposed on the network
            return f"!{ref.group(1)} holds {len(given)} characters; give at least {MIN_PASSWORD}"
        return given
    if BCRYPT.match(text):
        return text                            # a bcrypt hash: nats-server checks the password against it
    return "!give it as ${ENV_VAR} or a bcrypt hash, never in plain text"


def with_user(url: str, user: str, password: str) -> str:
    """Every server of a (comma-separated) NATS URL with this user and password in it."""
    return _each_server(url, f"{quote(user, safe='')}:{quote(password, safe='')}@")


def without_user(url: str) -> str:
    """Every server of a (comma-separated) NATS URL with no user in it: where a subscriber connects, as its own."""
    return _each_server(url, "")


def _each_server(url: str, user_part: str) -> str:
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        out.append(urlunsplit(parts._replace(netloc=user_part + parts.netloc.rsplit("@", 1)[-1])))
    return ",".join(out)
