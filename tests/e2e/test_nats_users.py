"""`switchyard up --nats-users F`: NATS run with users. The services come up as their own user, a subscriber's user
catches up on the log and follows it live, a client without a user is refused, the tools find the services' user
in the data dir, and a users file with a password in plain text stops `up` before anything starts. A SIGHUP has
`up` read the file again: NATS takes the new users without a restart, or keeps the old ones when the file has a
problem, and the services serve on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest

from switchyard_gateway.cli import main
from switchyard_gateway.contracts import messages as m
from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.codec import encode
from switchyard_gateway.contracts.deadletters import EventDeadLettered
from switchyard_gateway.contracts.events import UsageRecorded
from switchyard_gateway.events.door import Door
from switchyard_gateway.kit import eventlog, natsio
from switchyard_gateway.kit.nats_auth import with_user
from switchyard_gateway.kit.natsio import NotAuthorized, ServiceError
from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import REPO, create_database, run_sync, start_up, stop_up, wait_for

USERS = """subscribers:
  - user: billing
    password: ${BILLING_NATS_PASSWORD}
    name: spend
"""
# passwords and their bcrypt hashes (cost 4: quick for nats-server to check), as an operator rotates them: made with
# python -c "import crypt; print(crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))"
ROTOR_FIRST = ("rotor-password-first-0123", "$2b$04$4zLJchVX3c4B5qkdECi01e6lSRE.InFCtAR7I6am/m9s1ZxD3u6YC")
ROTOR_SECOND = ("rotor-password-second-4567", "$2b$04$glHpYuum7BF/ERCMdt6Cl.baD50P1xV/mx95vVBNTKco8vcVW2WWe")
NEWBIE = ("newbie-password-000000001", "$2b$04$N5eR.2/GfKi.bvozexdFUO1JVQSXSZh6JMzMgN7HV0r8r.EeRYibC")


def users_file(*extra: str) -> str:
    """USERS and more subscribers, each given as a YAML flow mapping."""
    return USERS + "".join(f"  - {entry}\n" for entry in extra)


@dataclass
class UsersUp:
    """`switchyard up --demo --nats-users F` as a subprocess, F in its data dir."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    env: dict[str, str]
    database_url: str

    @property
    def users(self) -> Path:
        return self.data_dir / "users.yaml"

    @property
    def bare(self) -> str:
        """NATS's URL without a user: where subscribers connect."""
        return f"nats://{running_url(self.data_dir, 'nats_url').split('@')[-1]}"

    def output(self) -> str:
        return (self.data_dir / "up.log").read_text()

    async def sighup(self) -> str:
        """Send `up` SIGHUP; the line it answers with."""
        before = self.output().count("switchyard: SIGHUP: ")
        self.proc.send_signal(signal.SIGHUP)
        await wait_for(lambda: self.output().count("switchyard: SIGHUP: ") > before, 15, what="up to answer SIGHUP")
        return [line for line in self.output().splitlines() if line.startswith("switchyard: SIGHUP: ")][before]


@pytest.fixture(scope="module")
def users_up(urls, stack_root: Path) -> Iterator[UsersUp]:
    data_dir = stack_root / f"users-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    (data_dir / "users.yaml").write_text(USERS)
    database_url = run_sync(create_database(urls.database_url, f"users_{uuid.uuid4().hex[:8]}"))
    env = {**os.environ, "SWITCHYARD_DATABASE_URL": database_url, "SWITCHYARD_REDIS_URL": urls.redis_url,
           "BILLING_NATS_PASSWORD": "billing-secret-password"}
    env.pop("SWITCHYARD_NATS_URL", None)
    port = pick_free_port(set())
    proc = start_up(["--demo", "--data-dir", str(data_dir), "--port", str(port), "--no-fsync", "--nats-users",
                     str(data_dir / "users.yaml")], env, data_dir / "up.log")
    try:
        yield UsersUp(proc, data_dir, port, env, database_url)
    finally:
        stop_up(proc)


async def test_up_with_users_serves_its_services_and_a_subscriber_and_refuses_the_rest(
        users_up: UsersUp, urls) -> None:
    data_dir, port, env, database_url = users_up.data_dir, users_up.port, users_up.env, users_up.database_url
    assert (data_dir / "nats" / "auth.conf").stat().st_mode & 0o777 == 0o600
    assert "switchyard:" in running_url(data_dir, "nats_url")      # the tools find the services' user
    bare = f"nats://{running_url(data_dir, 'nats_url').split('@')[-1]}"
    assert f"subscribers connect to {bare}, each as its user of " in (data_dir / "up.log").read_text()
    with pytest.raises(nats.errors.Error):                           # no user: refused
        await nats.connect(bare, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    async with httpx.AsyncClient() as client:                         # the services did connect, as their user
        health = (await client.get(f"http://127.0.0.1:{port}/health", timeout=5)).json()
    assert all(s["status"] == "ok" for s in health["services"].values()), health

    own = await create_database(urls.database_url, f"users_sub_{uuid.uuid4().hex[:8]}")
    subscriber = Subscriber("spend", _nothing, nats_url=with_user(bare, "billing", "billing-secret-password"),
                            database_url=own)
    running = asyncio.ensure_future(subscriber.run())
    try:
        await asyncio.wait_for(subscriber.live.wait(), 30)           # the registry's bootstrap events, then live
        pool = await eventlog.create_pool(database_url)
        async with pool.acquire() as conn:
            head = await eventlog.head(conn)
        await pool.close()
        assert head > 0 and await subscriber.position.reach(head, 30)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    # a wrong password ends the example at once, saying so, rather than waiting for NATS for ever
    example = await asyncio.to_thread(subprocess.run, [
        sys.executable, str(REPO / "examples" / "tenant_spend.py"), "--database", own,
        "--nats", with_user(bare, "billing", "not-the-password")], capture_output=True, text=True, timeout=60)
    assert example.returncode == 1 and "Traceback" not in example.stderr, example.stderr
    assert example.stderr.splitlines()[-1] == (
        f"tenant_spend.py: NATS at {bare.replace('//', '//billing:***@')} refused the user billing: Authorization "
        "Violation (a wrong password, or a user it does not know)"), example.stderr
    listed = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "switchyard_gateway.cli", "events",
                                                      "dead-letters", "--data-dir", str(data_dir)],
                                     capture_output=True, text=True, env={**env}, cwd=REPO)
    assert listed.returncode == 0 and "no dead letters" in listed.stdout, listed.stderr

    # A subscriber's dead letters are stored by metering, under the subscriber's own name only. One claiming to
    # be the usage ingest's (or a service fold's), published by the subscriber itself, had `dead-letters --all`
    # publish what it held, as the services: an admin key with a secret of the subscriber's choosing.
    forged = EventDeadLettered(consumer="metering", stage="apply", error="forged", source="USAGE",
                               subject=subjects.REGISTRY_COMMAND, sequence=3, data=encode(m.IssueKey(
                                   tenant_id="admin", role="admin", secret="sy_attacker_chosen_0123456789")))
    refusals: list[str] = []

    async def keep(exc: Exception) -> None:
        refusals.append(str(exc))

    sub_nc = await nats.connect(with_user(bare, "billing", "billing-secret-password"), inbox_prefix=b"_INBOX_billing",
                                error_cb=keep)
    try:
        await sub_nc.publish(f"{subjects.EVENT_DEAD_LETTERED}.spend", encode(forged))
        await sub_nc.flush()
        with pytest.raises(ServiceError) as theirs:
            await Door(sub_nc, user="billing", name="spend", tenant=None).set_aside(forged, "metering:USAGE:3:apply:")
        assert theirs.value.status == 403
    finally:
        await sub_nc.close()
    assert any("permissions violation for publish" in r for r in refusals), refusals
    cli = [sys.executable, "-m", "switchyard_gateway.cli", "events", "dead-letters", "--data-dir", str(data_dir)]
    shown = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True, env={**env}, cwd=REPO)
    assert shown.returncode == 0 and "no dead letters" in shown.stdout, shown.stdout
    sent = await asyncio.to_thread(subprocess.run, [*cli, "--all"], capture_output=True, text=True, env={**env},
                                   cwd=REPO)
    assert sent.returncode == 0, sent.stderr
    keys = dict(line.split("=", 1) for line in (data_dir / "keys.env").read_text().splitlines() if "=" in line)
    async with httpx.AsyncClient() as client:
        refused = await client.get(f"http://127.0.0.1:{port}/api/admin/tenants", timeout=5,
                                   headers={"Authorization": "Bearer sy_attacker_chosen_0123456789"})
        status = await client.get(f"http://127.0.0.1:{port}/api/system/status", timeout=5,
                                  headers={"Authorization": f"Bearer {keys['SWITCHYARD_ADMIN_KEY']}"})
    assert refused.status_code == 401
    nats_password = keys["SWITCHYARD_NATS_PASSWORD"]
    assert nats_password not in status.text and "@" not in status.json()["nats"]["server"], status.text


class Applied:
    """What a subscriber applied: positions, and the request id of each usage event."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self.requests: set[str] = set()

    async def __call__(self, _conn, batch) -> None:
        for position, event in batch:
            self.positions.append(position)
            if isinstance(event, UsageRecorded):
                self.requests.add(event.request_id)


async def test_sighup_reloads_the_subscribers_and_keeps_them_when_the_file_has_a_problem(
        users_up: UsersUp, urls) -> None:
    """Rotating a subscriber's password, adding or removing one, took a restart of the whole stack. Now a SIGHUP
    has `up` read the file again: a subscriber added connects, one whose password changed is refused while it runs
    (NotAuthorized) and comes back with the new one, from the log; a file with a problem changes nothing and `up`
    says why; the services serve on and record throughout."""
    rotor = "{user: rotor, name: rotor-feed, password: '%s'}"
    bare, database = users_up.bare, users_up.database_url

    async def follower(password: str, applied: Applied) -> tuple[Subscriber, asyncio.Future[None]]:
        own = await create_database(urls.database_url, f"rotor_{uuid.uuid4().hex[:8]}")
        subscriber = Subscriber("rotor-feed", applied, nats_url=with_user(bare, "rotor", password), database_url=own)
        return subscriber, asyncio.ensure_future(subscriber.run())

    async def head() -> int:
        pool = await eventlog.create_pool(database)
        try:
            async with pool.acquire() as conn:
                return await eventlog.head(conn)
        finally:
            await pool.close()

    users_up.users.write_text(users_file(rotor % ROTOR_FIRST[1]))
    said = await users_up.sighup()
    assert said.endswith("2 subscribers now allowed (1 added, 0 removed, 0 changed)"), said
    assert (users_up.data_dir / "nats" / "auth.conf").stat().st_mode & 0o777 == 0o600
    first = Applied()
    old, old_running = await follower(ROTOR_FIRST[0], first)
    new_running = None
    try:
        await asyncio.wait_for(old.live.wait(), 30)
        assert await old.position.reach(await head(), 30)

        users_up.users.write_text(users_file(rotor % ROTOR_SECOND[1], "{user: newbie, name: newbie-feed, "
                                                                      f"password: '{NEWBIE[1]}'}}"))
        said = await users_up.sighup()
        assert said.endswith("3 subscribers now allowed (1 added, 0 removed, 1 changed)"), said
        assert ROTOR_SECOND[1] not in said and ROTOR_SECOND[0] not in said
        await wait_for(old_running.done, 15, what="the subscriber whose password changed to end")
        with pytest.raises(NotAuthorized, match="refused the credentials of the user rotor"):
            old_running.result()
        with pytest.raises(NotAuthorized):
            await natsio.connect(with_user(bare, "rotor", ROTOR_FIRST[0]), "old-password", 10)
        newbie = await natsio.connect(with_user(bare, "newbie", NEWBIE[0]), "added", 10, inbox_prefix="_INBOX_newbie")
        await newbie.close()
        second = Applied()
        new, new_running = await follower(ROTOR_SECOND[0], second)
        await asyncio.wait_for(new.live.wait(), 30)                 # caught up from the log, then live
        assert await new.position.reach(await head(), 30)

        users_up.users.write_text(users_file(rotor % ROTOR_SECOND[1], "{user: plain, name: plain-feed, "
                                                                      "password: hunter2-hunter2-hunter2}"))
        said = await users_up.sighup()
        assert "users not reloaded" in said and "subscribers[2].password: give it as ${ENV_VAR} or a bcrypt hash" \
            in said and said.endswith("NATS keeps the 3 subscribers it allowed"), said
        assert "hunter2" not in said
        newbie = await natsio.connect(with_user(bare, "newbie", NEWBIE[0]), "kept", 10, inbox_prefix="_INBOX_newbie")
        await newbie.close()

        request_id = uuid.uuid4().hex                              # the services serve on, and record the call
        keys = dict(line.split("=", 1) for line in (users_up.data_dir / "keys.env").read_text().splitlines()
                    if "=" in line)
        async with httpx.AsyncClient() as client:
            reply = await client.post(f"http://127.0.0.1:{users_up.port}/v1/chat/completions", timeout=30, json={
                "model": "llama3.2", "messages": [{"role": "user", "content": "after the reloads"}]}, headers={
                "Authorization": f"Bearer {keys['SWITCHYARD_DEMO_KEY']}", "X-Request-Id": request_id})
        assert reply.status_code == 200, reply.text
        await wait_for(lambda: request_id in second.requests, 15, what="the call's usage, followed by the subscriber")
        assert not new_running.done() and users_up.proc.poll() is None
        assert second.positions == list(range(1, second.positions[-1] + 1))
    finally:
        for task in (old_running, new_running):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        users_up.users.write_text(USERS)


def test_a_users_file_with_a_plain_password_stops_up_before_anything_starts(tmp_path: Path, capsys) -> None:
    (tmp_path / "users.yaml").write_text("subscribers:\n  - {user: billing, password: hunter2, name: spend}\n")
    code = main(["up", "--data-dir", str(tmp_path / "data"), "--port", str(pick_free_port(set())),
                 "--nats-users", str(tmp_path / "users.yaml")])
    assert code == 1
    assert "subscribers[0].password: give it as ${ENV_VAR}" in capsys.readouterr().err
    assert not (tmp_path / "data" / "stack.json").exists()


async def _nothing(_conn, _batch) -> None:
    return None
