"""`switchyard up --nats-users F`: NATS run with users. The services come up as their own user, a subscriber's user
catches up on the log and follows it live, a client without a user is refused, the tools find the services' user
in the data dir, and a users file with a password in plain text stops `up` before anything starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
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
from switchyard_gateway.events.door import Door
from switchyard_gateway.kit import eventlog
from switchyard_gateway.kit.nats_auth import with_user
from switchyard_gateway.kit.natsio import ServiceError
from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.subscribe import Subscriber
from tests.conftest import REPO, create_database, start_up, stop_up

USERS = """subscribers:
  - user: billing
    password: ${BILLING_NATS_PASSWORD}
    name: spend
"""


async def test_up_with_users_serves_its_services_and_a_subscriber_and_refuses_the_rest(urls, stack_root: Path) -> None:
    data_dir = stack_root / f"users-{uuid.uuid4().hex[:6]}"
    data_dir.mkdir()
    (data_dir / "users.yaml").write_text(USERS)
    database_url = await create_database(urls.database_url, f"users_{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "SWITCHYARD_DATABASE_URL": database_url, "SWITCHYARD_REDIS_URL": urls.redis_url,
           "BILLING_NATS_PASSWORD": "billing-secret-password"}
    env.pop("SWITCHYARD_NATS_URL", None)
    port = pick_free_port(set())
    proc = start_up(["--data-dir", str(data_dir), "--port", str(port), "--no-fsync", "--nats-users",
                     str(data_dir / "users.yaml")], env, data_dir / "up.log")
    try:
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
    finally:
        stop_up(proc)


def test_a_users_file_with_a_plain_password_stops_up_before_anything_starts(tmp_path: Path, capsys) -> None:
    (tmp_path / "users.yaml").write_text("subscribers:\n  - {user: billing, password: hunter2, name: spend}\n")
    code = main(["up", "--data-dir", str(tmp_path / "data"), "--port", str(pick_free_port(set())),
                 "--nats-users", str(tmp_path / "users.yaml")])
    assert code == 1
    assert "subscribers[0].password: give it as ${ENV_VAR}" in capsys.readouterr().err
    assert not (tmp_path / "data" / "stack.json").exists()


async def _nothing(_conn, _batch) -> None:
    return None
