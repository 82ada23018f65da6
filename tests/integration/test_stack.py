"""The embedded launcher against real nats-server, postgres and valkey-server processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
import redis
import redis.asyncio as aioredis
from nats.errors import NoServersError

from switchyard_gateway.kit import nats_auth
from switchyard_gateway.kit.nats_auth import SubscriberUser
from switchyard_gateway.kit.settings import mask_password
from switchyard_gateway.kit.stack import EmbeddedStack, StackError
from switchyard_gateway.kit.stack_nats import NatsServer
from switchyard_gateway.kit.stack_proc import pick_free_port, pid_alive, wait_until
from switchyard_gateway.resp import Valkey


@pytest.fixture(scope="module")
def tmp_root() -> Iterator[Path]:
    """A temp dir all users can traverse: pytest's tmp_path is mode 700; postgres may run as another user."""
    root = Path(tempfile.mkdtemp(prefix="switchyard-stack-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_root: Path) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(tmp_root / "shared", durable=False) as running:
        yield running


# ---- helpers ------------------------------------------------------------------------------------


async def quiet(error: Exception) -> None:
    """nats-py logs every refused connection attempt unless given an error callback."""


async def connect_nats(url: str) -> nats.NATS:
    # max_reconnect_attempts=0 retries a refused first connect forever in nats-py 2.16; 1 gives up
    return await nats.connect(
        url, connect_timeout=2, max_reconnect_attempts=1, reconnect_time_wait=0.1, error_cb=quiet
    )


async def publish_to_new_stream(url: str, stream: str, payload: bytes) -> None:
    nc = await connect_nats(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        await js.publish(f"{stream.lower()}.one", payload)
    finally:
        await nc.close()


async def first_message(url: str, stream: str) -> bytes:
    nc = await connect_nats(url)
    try:
        return (await nc.jetstream().get_msg(stream, 1)).data or b""
    finally:
        await nc.close()


async def write_row(database_url: str, table: str, note: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        await conn.execute(f"CREATE TABLE {table} (note text NOT NULL)")
        await conn.execute(f"INSERT INTO {table} VALUES ($1)", note)
    finally:
        await conn.close()


async def read_rows(database_url: str, table: str) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        return [row["note"] for row in await conn.fetch(f"SELECT note FROM {table}")]
    finally:
        await conn.close()


async def valkey_get(redis_url: str, key: str) -> bytes | None:
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


async def valkey_set(redis_url: str, key: str, value: bytes) -> None:
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        await client.set(key, value)
    finally:
        await client.aclose()


# ---- the whole stack ----------------------------------------------------------------------------


async def test_fresh_stack_answers_jetstream_postgres_and_valkey(stack: EmbeddedStack) -> None:
    urls = stack.urls
    await publish_to_new_stream(urls.nats_url, "FRESH", b"hello")
    assert await first_message(urls.nats_url, "FRESH") == b"hello"

    # the services reach PostgreSQL through its socket, which no other user can open or take while it restarts
    assert f"host={stack.data_dir}/pg/run" in urls.database_url, mask_password(urls.database_url)
    conn = await asyncpg.connect(urls.database_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT current_database()") == "switchyard"
        assert await conn.fetchval("SHOW max_connections") == "200"
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()

    await valkey_set(urls.redis_url, "fresh", b"value")
    assert await valkey_get(urls.redis_url, "fresh") == b"value"
    # the services are given its Unix socket (cheaper than loopback TCP); tools still find it on its port
    password = (stack.data_dir / "valkey" / "password").read_text().strip()
    assert urls.redis_url.startswith(f"unix://:{password}@/") and urls.redis_url.endswith("/valkey/valkey.sock")
    assert await valkey_get(f"redis://:{password}@127.0.0.1:{stack.ports['valkey']}/0", "fresh") == b"value"
    valkey = Valkey(urls.redis_url)
    try:
        assert await valkey.call("GET", "fresh") == b"value"
    finally:
        await valkey.close()
    for name in ("nats", "postgres", "valkey"):
        assert stack.log_path(name).stat().st_size > 0


async def test_postgres_and_valkey_let_in_only_who_has_their_password(stack: EmbeddedStack) -> None:
    """PostgreSQL trusted every client on loopback and Valkey asked for no password: any program of any user of the
    machine could rewrite the event log, or run a program as the stack's user through the superuser. Each asks
    for a password kept in a file only its owner reads, never on a command line (which every user can read)."""
    port = stack.ports["postgres"]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/switchyard", timeout=5)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres:guess@127.0.0.1:{port}/switchyard", timeout=5)
    with pytest.raises(redis.AuthenticationError):
        await valkey_get(f"redis://127.0.0.1:{stack.ports['valkey']}/0", "fresh")
    for name in ("postgres.password", "valkey/password", "valkey/auth.conf", "urls.private.json"):
        assert (stack.data_dir / name).stat().st_mode & 0o077 == 0, name
    passwords = [(stack.data_dir / name).read_text().strip() for name in ("postgres.password", "valkey/password")]
    for pid in (stack._managed("postgres").pid, stack._managed("valkey").pid):  # noqa: SLF001
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert not any(password in cmdline for password in passwords)


async def test_a_cluster_made_trusting_anyone_asks_for_the_password_once_started_again(tmp_root: Path) -> None:
    """A data dir made before the superuser had a password (initdb --auth=trust) keeps its data and, started
    again, asks every client for the password."""
    data = tmp_root / "was-trusting"
    with EmbeddedStack(data, durable=False) as first:
        await write_row(first.urls.database_url, "kept", "before")
    hba = data / "pg" / "data" / "pg_hba.conf"
    hba.write_text(re.sub(r"scram-sha-256\s*$", "trust", hba.read_text(), flags=re.M))   # as initdb --auth=trust
    with EmbeddedStack(data, durable=False) as second:
        assert await read_rows(second.urls.database_url, "kept") == ["before"]
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{second.ports['postgres']}/switchyard", timeout=5)
    assert "trust" not in "".join(line for line in hba.read_text().splitlines() if not line.startswith("#"))


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as a user of its own only when we are root")
async def test_every_node_of_a_nats_cluster_reloads_its_users_in_place_under_its_own_name(
        tmp_root: Path, stack: EmbeddedStack) -> None:
    """A subscriber added or removed took a restart of NATS: nats-server refused to reload a configuration without
    the name its flag gave ("config reload not supported for ServerName"). Each node's file names it now (the same
    name as before, which its JetStream store knows it by), and every node reloads its users in place."""
    password, hashed = "rotor-password-first-0123", "$2b$04$4zLJchVX3c4B5qkdECi01e6lSRE.InFCtAR7I6am/m9s1ZxD3u6YC"
    with EmbeddedStack(tmp_root / "reloads", database_url=stack.urls.database_url, redis_url=stack.urls.redis_url,
                       durable=False, nats_nodes=3) as running:
        pids = json.loads((running.data_dir / "stack.json").read_text())["pids"]
        nodes = nats_auth.without_user(running.urls.nats_url).split(",")
        assert running.reload_nats_users([SubscriberUser("rotor", hashed, "rotor-feed")]) == []
        for number, node in enumerate(nodes, start=1):
            nc = await nats.connect(nats_auth.with_user(node, "rotor", password), connect_timeout=2,
                                    max_reconnect_attempts=1, error_cb=quiet, inbox_prefix="_INBOX_rotor")
            await nc.close()
            with urllib.request.urlopen(f"http://127.0.0.1:{running.ports[f'nats-{number}_monitor']}/varz") as varz:
                assert json.loads(varz.read())["server_name"] == f"switchyard-{number}"
            assert (running.data_dir / f"nats-{number}" / "auth.conf").stat().st_mode & 0o777 == 0o600
        assert running.reload_nats_users([]) == []
        with pytest.raises(nats.errors.Error):
            await connect_nats(nats_auth.with_user(nodes[2], "rotor", password))
        assert json.loads((running.data_dir / "stack.json").read_text())["pids"] == pids      # none restarted


def test_links_postgres_own_user_leaves_in_its_directory_are_not_followed_as_root(tmp_root: Path, stack) -> None:
    """As root, `up` handed PostgreSQL's user its socket directory with a chown that followed links, and that user
    owns <data>/pg: a link there to a directory of root's made that directory its own at the next start (and
    through /etc, root). Such a start is refused now, and the directory linked to stays root's."""
    data = tmp_root / "linked"
    with EmbeddedStack(data, durable=False, nats_url=stack.urls.nats_url, redis_url=stack.urls.redis_url):
        pass
    roots = tmp_root / "roots-only"
    roots.mkdir(mode=0o700)
    run = data / "pg" / "run"
    shutil.rmtree(run)
    run.symlink_to(roots)
    with pytest.raises(StackError, match="not a directory of its own"):
        with EmbeddedStack(data, durable=False, nats_url=stack.urls.nats_url, redis_url=stack.urls.redis_url):
            pass
    assert roots.stat().st_uid == 0 and roots.stat().st_mode & 0o777 == 0o700


async def test_second_start_on_same_dir_keeps_data_and_ports(tmp_root: Path) -> None:
    data_dir = tmp_root / "restart"
    with EmbeddedStack(data_dir, durable=False) as first:
        urls = first.urls
        await publish_to_new_stream(urls.nats_url, "KEPT", b"message")
        await write_row(urls.database_url, "kept", "row")
        await valkey_set(urls.redis_url, "kept", b"key")

    with EmbeddedStack(data_dir, durable=False) as second:
        assert second.urls == urls
        assert await first_message(urls.nats_url, "KEPT") == b"message"
        assert await read_rows(urls.database_url, "kept") == ["row"]
        assert await valkey_get(urls.redis_url, "kept") == b"key"
    pids = json.loads((data_dir / "stack.json").read_text())["pids"]
    assert pids == {"nats": None, "postgres": None, "valkey": None}


def test_second_launcher_on_same_dir_is_refused(stack: EmbeddedStack) -> None:
    with pytest.raises(StackError, match="in use by another launcher"):
        EmbeddedStack(stack.data_dir).start()
    assert all(stack.is_running(name) for name in ("nats", "postgres", "valkey"))


def test_stop_is_idempotent_and_start_again_reuses_ports(stack: EmbeddedStack, tmp_root: Path) -> None:
    shared = stack.urls  # only valkey is ours here, to stay fast
    launcher = EmbeddedStack(
        tmp_root / "idempotent", nats_url=shared.nats_url, database_url=shared.database_url
    )
    launcher.stop()
    first = launcher.start()
    launcher.stop()
    launcher.stop()
    assert not launcher.is_running("valkey")
    assert launcher.start() == first
    launcher.stop()


# ---- one component ------------------------------------------------------------------------------


async def test_nats_restarts_on_same_port_with_its_streams(stack: EmbeddedStack) -> None:
    url = stack.urls.nats_url
    await publish_to_new_stream(url, "BOUNCE", b"before")

    stack.stop_component("nats")
    assert not stack.is_running("nats")
    with pytest.raises(NoServersError):
        await connect_nats(url)

    stack.start_component("nats")
    assert await first_message(url, "BOUNCE") == b"before"


async def test_postgres_restarts_on_same_port_with_its_rows(stack: EmbeddedStack) -> None:
    url = stack.urls.database_url
    await write_row(url, "bounce", "before")

    stack.stop_component("postgres")
    with pytest.raises(OSError):
        await asyncpg.connect(url, timeout=2)

    stack.start_component("postgres")
    assert await read_rows(url, "bounce") == ["before"]


async def test_postgres_starts_again_after_a_crash_left_its_lock_file(stack: EmbeddedStack) -> None:
    stack.stop_component("postgres", graceful=False)
    assert (stack.data_dir / "pg" / "data" / "postmaster.pid").exists()

    stack.start_component("postgres")
    conn = await asyncpg.connect(stack.urls.database_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_external_component_is_not_started(stack: EmbeddedStack, tmp_root: Path) -> None:
    shared = stack.urls
    mixed = EmbeddedStack(tmp_root / "external", nats_url=shared.nats_url, database_url=shared.database_url)
    with mixed:
        assert mixed.urls.nats_url == shared.nats_url
        assert mixed.urls.database_url == shared.database_url
        assert mixed.urls.redis_url != shared.redis_url
        assert mixed.is_running("valkey") and not mixed.is_running("nats")
        with pytest.raises(StackError, match="external"):
            mixed.stop_component("nats")
    assert not (tmp_root / "external" / "pg").exists()
    assert not (tmp_root / "external" / "nats").exists()


def test_unreachable_external_url_fails_with_its_reason_and_no_password(
    stack: EmbeddedStack, tmp_root: Path
) -> None:
    dead_port = pick_free_port(set())
    launcher = EmbeddedStack(
        tmp_root / "unreachable",
        nats_url=stack.urls.nats_url,
        database_url=f"postgresql://postgres:secret@127.0.0.1:{dead_port}/x",
        redis_url=stack.urls.redis_url,
        ready_timeout_s=0.5,
    )
    expected = f"postgres: external postgresql://postgres:***@127.0.0.1:{dead_port}/x did not answer"
    with pytest.raises(StackError, match=re.escape(expected)) as raised:
        launcher.start()
    assert "refused" in str(raised.value).lower()
    assert "secret" not in str(raised.value)


def test_server_that_exits_at_start_up_raises_with_its_log_tail(tmp_root: Path, stack: EmbeddedStack) -> None:
    data_dir = tmp_root / "broken"
    (data_dir / "nats").mkdir(parents=True)
    (data_dir / "nats" / "jetstream").write_text("a file where nats wants its store directory")
    launcher = EmbeddedStack(
        data_dir, database_url=stack.urls.database_url, redis_url=stack.urls.redis_url, ready_timeout_s=10
    )
    with pytest.raises(StackError, match="nats: exited during start-up") as raised:
        launcher.start()
    assert "nats.log" in str(raised.value) and "storage directory is not a directory" in str(raised.value)
    assert not launcher.is_running("nats")


def test_leftover_server_of_a_dead_launcher_is_replaced(tmp_root: Path, stack: EmbeddedStack) -> None:
    data_dir = tmp_root / "leftover"
    port = pick_free_port(set())
    monitor_port = pick_free_port({port})
    (data_dir / "nats").mkdir(parents=True)
    ports = {"nats": port, "nats_monitor": monitor_port}
    like_ours = NatsServer(data_dir, data_dir / "logs", ports, durable=False)
    orphan = subprocess.Popen(like_ours.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(like_ours.answers, timeout_s=10)
        state = {"ports": ports, "pids": {"nats": orphan.pid}}
        (data_dir / "stack.json").write_text(json.dumps(state))

        fresh = EmbeddedStack(data_dir, database_url=stack.urls.database_url, redis_url=stack.urls.redis_url)
        with fresh:
            assert orphan.wait(timeout=5) is not None
            assert fresh.urls.nats_url.endswith(f"@127.0.0.1:{port}")
            assert fresh.is_running("nats")
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
    assert not pid_alive(orphan.pid)


async def test_a_commit_acknowledged_without_fsync_survives_a_kill_9_of_postgres(tmp_root: Path) -> None:
    """Without fsync, only a machine's death may lose recent commits: one PostgreSQL acknowledged must outlive a
    kill -9 of it. Metering acknowledges a usage event to NATS once its commit returns; a commit kept only in
    PostgreSQL's memory (`synchronous_commit=off`) died with it, and the event with it."""
    with EmbeddedStack(tmp_root / "killed-pg", durable=False) as stack:
        url = stack.urls.database_url
        conn = await asyncpg.connect(url, timeout=5)
        await conn.execute("CREATE TABLE acked (n int)")
        await conn.execute("CHECKPOINT")
        await conn.close()
        for n in range(1, 4):
            conn = await asyncpg.connect(url, timeout=5)
            await conn.execute("INSERT INTO acked VALUES ($1)", n)        # committed and acknowledged
            stack.stop_component("postgres", graceful=False)             # the postmaster and every backend
            conn.terminate()
            stack.start_component("postgres")
            check = await asyncpg.connect(url, timeout=10)
            try:
                assert await check.fetchval("SELECT count(*) FROM acked") == n, f"commit {n} lost by the kill"
            finally:
                await check.close()


def test_a_private_file_is_never_written_through_a_link_in_its_place(tmp_path: Path) -> None:
    """As root the stack writes into a directory PostgreSQL's own user owns (pg_hba.conf): a link put there in the
    file's place, to /etc/passwd say, must not be written through."""
    from switchyard_gateway.kit.stack_proc import write_private

    target = tmp_path / "roots"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "pg_hba.conf"
    link.symlink_to(target)
    with pytest.raises(OSError):
        write_private(link, "host all all 127.0.0.1/32 scram-sha-256\n")
    assert target.read_text() == "root:x:0:0\n"
    write_private(tmp_path / "new", "secret\n")
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o600
