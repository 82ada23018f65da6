"""Scaled out on one machine: `up --replicas ... --nats-cluster 3`, its replicas and NATS nodes killed under load.

One stack for the module, owning its three NATS nodes, PostgreSQL and Valkey: two replicas of every
service, the two gateways sharing the public port. Each kill is measured (time until whole again) and
its figures printed (`pytest -s` shows them); the log is held to account after each (tests/e2e/accounting.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import nats.errors
import psutil
import pytest

from switchyard_gateway.contracts import subjects
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.stack import running_url
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.simulator import SimConfig, Simulator
from tests.conftest import start_up, stop_up, traversable_tempdir, wait_for
from tests.e2e.accounting import DONE, Books, MixedLoad, usage_by_request

REPLICAS = "gateway=2,metering=2,quota=2,router=2,registry=2"
STREAMS = (subjects.STREAM_USAGE, subjects.STREAM_REGISTRY, subjects.STREAM_ROUTING, subjects.STREAM_LIMITS)


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    root: Path
    url: str
    key: str
    admin_key: str

    @property
    def state(self) -> dict:
        return json.loads((self.root / "data" / "stack.json").read_text())

    @property
    def nats_url(self) -> str:
        return running_url(self.root / "data", "nats_url")

    @property
    def database_url(self) -> str:
        return running_url(self.root / "data", "database_url")

    def admin(self, method: str, path: str, body: object = None) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", json=body, headers={"X-API-Key": self.admin_key}, timeout=30)

    def health(self) -> dict:
        return self.admin("GET", "/health").json()

    def simulators(self, **knobs: float) -> None:
        for name in ("sim-ollama", "sim-openai"):
            reply = httpx.post(f"http://127.0.0.1:{self.state['ports'][name]}/_sim/config", json=knobs, timeout=10)
            assert reply.status_code == 200, reply.text

    def unit(self, name: str) -> list[psutil.Process]:
        """The live processes of one supervised unit (`gateway-1`: its one process when it runs one worker)."""
        found = []
        for process in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if process.status() != psutil.STATUS_ZOMBIE and process.environ().get("SWITCHYARD_INSTANCE") == name:
                    found.append(process)
            except psutil.Error:
                continue
        return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = traversable_tempdir("switchyard-cluster-")
    port = pick_free_port(set())
    key, admin_key = f"sy_clusterdemo_{uuid.uuid4().hex}", f"sy_clusteradmin_{uuid.uuid4().hex}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
           "SWITCHYARD_DEMO_KEY": key, "SWITCHYARD_ADMIN_KEY": admin_key,
           # an open breaker stays open through a change of leader (about 5 s), so its state can be compared
           "SWITCHYARD_BREAKER_COOL_DOWN_S": "60"}
    proc = start_up(["--demo", "--data-dir", str(root / "data"), "--port", str(port), "--no-fsync",
                     "--replicas", REPLICAS, "--nats-cluster", "3"], env, root / "up.log")
    stack = Cluster(proc, root, f"http://127.0.0.1:{port}", key, admin_key)
    try:
        assert stack.admin("PUT", "/api/admin/tenants/demo/limits", {"daily_tokens": 10**12}).status_code == 200
        yield stack
    finally:
        stop_up(proc)
        print("\n" + "\n".join(line for line in (root / "up.log").read_text().splitlines()
                                if line.startswith("switchyard:")))
        shutil.rmtree(root, ignore_errors=True)


async def stream_replicas(cluster: Cluster) -> dict[str, tuple[int, int]]:
    """Per stream: (replicas configured, replicas current: the leader and every follower caught up)."""
    nc = await natsio.connect(cluster.nats_url, "cluster-test", 10)
    try:
        js = nc.jetstream(timeout=5)
        found = {}
        for name in STREAMS:
            info = await js.stream_info(name)
            peers = info.cluster.replicas or [] if info.cluster else []
            current = (1 if info.cluster and info.cluster.leader else 0) + sum(
                1 for peer in peers if peer.current and not peer.offline)
            found[name] = (info.config.num_replicas, current)
        return found
    finally:
        await nc.close()


async def run_and_check(cluster: Cluster, load: MixedLoad, task: asyncio.Task[None]) -> Books:
    """Stop the load, wait until every call that got a status is in the log, check the books."""
    load.running = False
    await task

    async def recorded() -> Books | None:
        books = Books(dict(load.seen), await usage_by_request(cluster.database_url, load.prefix))
        return books if not books.lost else None

    books = await wait_for(recorded, timeout_s=60, interval_s=0.25, what="every call with a status recorded")
    books.check()
    return books


def served_share(load: MixedLoad) -> float:
    return load.answered / max(1, len(load.seen))


# ---- the topology ------------------------------------------------------------------------------


async def test_every_replica_answers_and_every_stream_is_kept_on_three_nodes(cluster: Cluster) -> None:
    services = cluster.health()["services"]
    assert {name: entry["instances"] for name, entry in services.items()} == {
        "gateway": 2, "registry": 2, "metering": 2, "router": 2, "quota": 2}
    assert sorted(services["gateway"]["members"]) == ["gateway-1", "gateway-2"]
    assert services["router"]["leader"] in ("router-1", "router-2")
    assert await stream_replicas(cluster) == {name: (3, 3) for name in STREAMS}
    state = cluster.state
    assert {f"nats-{n}" for n in (1, 2, 3)} <= set(state["pids"])
    assert {f"nats-{n}_cluster" for n in (1, 2, 3)} <= set(state["ports"])


@pytest.mark.parametrize("port_of", ["nats-1", "nats-2_cluster"])
async def test_a_client_or_a_node_without_the_password_is_refused(cluster: Cluster, port_of: str) -> None:
    """NATS trusted whoever reached its ports on loopback: any program of the machine could publish the registry's
    commands (an admin key of its own) or join the cluster as a node on a route port and read every message."""
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.state["ports"][port_of])
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        assert b"Authorization Violation" in await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


# ---- kills -------------------------------------------------------------------------------------


async def test_a_nats_node_killed_under_load_loses_nothing_and_its_streams_get_their_replicas_back(
        cluster: Cluster) -> None:
    load = MixedLoad(cluster.url, cluster.key, f"natsnode-{uuid.uuid4().hex[:8]}", max_tokens=8)
    task = asyncio.create_task(load.run())
    await wait_for(lambda: load.answered >= 50, timeout_s=30, what="the load under way")
    node = "nats-2"
    old_pid = cluster.state["pids"][node]
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    await wait_for(lambda: cluster.state["pids"].get(node) not in (None, old_pid)
                   and psutil.pid_exists(cluster.state["pids"][node]), timeout_s=30, what=f"{node} restarted")
    back_after = time.monotonic() - killed

    async def whole() -> bool:
        try:
            return all(current == 3 for _, current in (await stream_replicas(cluster)).values())
        except (nats.errors.Error, asyncio.TimeoutError, ConnectionError):    # a stream electing its leader
            return False

    await wait_for(whole, timeout_s=60, interval_s=0.25, what="every stream on three current replicas again")
    replicas_after = time.monotonic() - killed
    answered = load.answered
    await wait_for(lambda: load.answered >= answered + 50, timeout_s=30, what="calls after the node returned")
    books = await run_and_check(cluster, load, task)
    print(f"\nkill -9 {node} of 3: restarted after {back_after:.2f} s, every stream on 3 current replicas after "
          f"{replicas_after:.2f} s; calls {len(load.seen)} ({dict(load.count())}), served {served_share(load):.2%}; "
          f"usage events {len(books.usage)}, lost {len(books.lost)}, duplicated {len(books.duplicated)}")
    assert served_share(load) >= 0.99, load.count()
    assert await stream_replicas(cluster) == {name: (3, 3) for name in STREAMS}


async def test_one_of_two_gateways_killed_the_other_keeps_serving_and_nothing_is_lost(cluster: Cluster) -> None:
    cluster.simulators(token_interval_ms=50)               # streams of 0.4 s: the kill cuts some
    try:
        load = MixedLoad(cluster.url, cluster.key, f"gwkill-{uuid.uuid4().hex[:8]}", max_tokens=8)
        task = asyncio.create_task(load.run())
        await wait_for(lambda: load.answered >= 50 and len(load.streaming) >= 2, timeout_s=30,
                       what="the load under way")
        victims = cluster.unit("gateway-1")
        assert victims, "gateway-1 is running"             # one process: one worker needs no main beside it
        processes = len(victims)
        for process in victims:
            process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        answered = load.answered

        def whole_again() -> bool:
            try:
                return len(cluster.unit("gateway-1")) == processes and \
                    cluster.health()["services"]["gateway"]["instances"] == 2
            except httpx.TransportError:    # this poll's connection was queued on the killed gateway's socket
                return False

        await wait_for(whole_again, timeout_s=60, interval_s=0.2, what="gateway-1 back")
        back_after = time.monotonic() - killed
        served_meanwhile = load.answered - answered
        books = await run_and_check(cluster, load, task)
    finally:
        cluster.simulators(token_interval_ms=0)
    failed = {rid: load.sent_at[rid] - killed for rid, seen in load.seen.items() if seen != DONE}
    print(f"\nkill -9 gateway-1 of 2: back after {back_after:.2f} s, {served_meanwhile} calls served by gateway-2 "
          f"meanwhile; calls {len(load.seen)} ({dict(load.count())}), failed ones sent "
          f"{sorted(round(at, 3) for at in failed.values())} s after the kill; usage events {len(books.usage)} "
          f"({len(books.interrupted)} interrupted), lost {len(books.lost)}, duplicated {len(books.duplicated)}")
    assert served_meanwhile > 0, "nothing was served while gateway-1 was down"
    late = {rid: at for rid, at in failed.items() if at > 1.0}
    assert not late, f"calls failed well after the kill, while gateway-2 was serving: {late}"


@pytest.fixture
async def failing_endpoint(cluster: Cluster):
    """An endpoint of our own whose every call fails with 500, its breaker opened by calls through the gateway."""
    tag = uuid.uuid4().hex[:8]
    model = f"lease-model-{tag}"
    async with Simulator(SimConfig(models=(model,), tokens=3, failure_kind="http_500", failure_rate=1.0)) as sim:
        endpoint = f"lease-{tag}"
        for path, body in (("/providers", {"provider_id": f"lp-{tag}", "kind": "openai-compatible"}),
                           ("/models", {"model_id": model}),
                           ("/endpoints", {"endpoint_id": endpoint, "provider_id": f"lp-{tag}", "base_url": sim.url,
                                           "models": [model], "timeout_s": 2.0}),
                           ("/tenants", {"tenant_id": f"lt-{tag}"})):
            assert cluster.admin("POST", f"/api/admin{path}", body).status_code == 201
        key = cluster.admin("POST", f"/api/admin/tenants/lt-{tag}/keys", {"name": "lease"}).json()["key"]

        def circuit() -> dict:
            listed = cluster.admin("GET", "/api/admin/circuits")
            return next((c for c in listed.json() if c["endpoint_id"] == endpoint), {}) \
                if listed.status_code == 200 else {}

        async def opened() -> bool:
            async with httpx.AsyncClient(timeout=30) as client:
                await client.post(f"{cluster.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                  json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            return circuit().get("state") == "open"

        await wait_for(opened, timeout_s=30, interval_s=0.2, what="the breaker open")
        try:
            yield circuit
        finally:
            cluster.admin("DELETE", f"/api/admin/endpoints/{endpoint}")


async def test_router_leader_killed_another_takes_the_lease_within_its_ttl_and_breakers_keep_their_state(
        cluster: Cluster, failing_endpoint) -> None:
    before = failing_endpoint()
    leader = cluster.health()["services"]["router"]["leader"]
    victims = cluster.unit(leader)
    assert len(victims) == 2, victims
    for process in victims:
        process.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    def new_leader() -> str | None:
        entry = cluster.health()["services"]["router"]
        return entry.get("leader") if entry.get("leader") and not any(p.is_running() for p in victims) else None

    successor = await wait_for(new_leader, timeout_s=30, interval_s=0.1, what="a new router leader")
    took_over = time.monotonic() - killed
    after = await wait_for(lambda: failing_endpoint() or None, timeout_s=10, what="the new leader's circuits")
    print(f"\nkill -9 of the router leader {leader}: {successor} leads after {took_over:.2f} s (lease TTL 5 s); "
          f"breaker {before['state']} since {before['since']} -> {after['state']} since {after['since']}")
    assert took_over <= 5.0 + 2.0, took_over               # the lease's TTL, and one attempt of the follower
    assert after["state"] in ("open", "half_open"), after      # never back to closed by a change of leader
    if after["state"] == "open":
        assert after["since"] == before["since"], "the breaker was not resumed from its last change"


async def test_two_metering_replicas_count_every_call_once_in_the_log_and_its_projections(cluster: Cluster) -> None:
    load = MixedLoad(cluster.url, cluster.key, f"metering-{uuid.uuid4().hex[:8]}", workers=16, max_tokens=4)
    task = asyncio.create_task(load.run())
    await wait_for(lambda: load.answered >= 600, timeout_s=60, what="600 calls answered")
    books = await run_and_check(cluster, load, task)
    assert len(books.usage) == len(books.with_status)

    async def log_totals() -> tuple[int, int, int]:
        conn = await asyncpg.connect(cluster.database_url)
        try:
            row = await conn.fetchrow("SELECT count(*) AS calls, sum((payload->>'input_tokens')::int) AS input,"
                                      " sum((payload->>'output_tokens')::int) AS output FROM events"
                                      " WHERE type = 'usage.recorded.v2' AND tenant = 'demo'"
                                      " AND payload->>'model' = 'llama3.2'")
        finally:
            await conn.close()
        return row["calls"], row["input"], row["output"]

    async def projected_equals_log() -> tuple | None:
        counts = cluster.admin("POST", "/api/stats", {"model": "llama3.2", "tenant_id": "demo"}).json()
        calls, input_tokens, output_tokens = await log_totals()
        shown = (counts["calls"], counts["input_tokens"], counts["output_tokens"])
        return shown if shown == (calls, input_tokens, output_tokens) else None

    shown = await wait_for(projected_equals_log, timeout_s=30, interval_s=0.25, what="the projections at the log")
    print(f"\ntwo metering replicas: {len(books.usage)} calls of this load recorded once each; the demo tenant's "
          f"figures (calls, input, output) {shown} equal the log's")


async def test_two_quota_replicas_and_two_gateways_hold_a_daily_quota_over_concurrent_calls(cluster: Cluster) -> None:
    tenant = f"q-{uuid.uuid4().hex[:8]}"
    assert cluster.admin("POST", "/api/admin/tenants", {"tenant_id": tenant}).status_code == 201
    key = cluster.admin("POST", f"/api/admin/tenants/{tenant}/keys", {"role": "member"}).json()["key"]
    assert cluster.admin("PUT", f"/api/admin/tenants/{tenant}/limits", {"daily_tokens": 10_000}).status_code == 200
    nc = await natsio.connect(cluster.nats_url, "cluster-quota-test", 10)
    gateways: set[str] = set()

    async def heard(msg) -> None:
        gateways.add(msg.subject.rsplit(".", 1)[-1])

    await nc.subscribe(f"{subjects.CALL_ATTEMPTED}.>", cb=heard)
    body = {"model": "llama3.2", "max_tokens": 16, "messages": [{"role": "user", "content": " ".join(["quota"] * 60)}]}
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0)) \
                as http:
            await wait_for(lambda: _limits_known(http, cluster.url, key), timeout_s=20, what="the limit in force")
            replies = await asyncio.gather(*(http.post(f"{cluster.url}/v1/chat/completions", json=body,
                                                       headers={"Authorization": f"Bearer {key}"}) for _ in range(200)))
    finally:
        await nc.close()
    statuses = [r.status_code for r in replies]
    assert 402 in statuses, "the quota was never reached"
    answered = statuses.count(200)

    async def settled() -> tuple[int, int] | None:
        conn = await asyncpg.connect(cluster.database_url)
        try:
            logged = await conn.fetchval("SELECT coalesce(sum((payload->>'input_tokens')::int"
                                         " + (payload->>'output_tokens')::int), 0) FROM events"
                                         " WHERE type = 'usage.recorded.v2' AND tenant = $1", tenant)
            calls = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'usage.recorded.v2'"
                                        " AND tenant = $1", tenant)
        finally:
            await conn.close()
        quotas = cluster.admin("GET", f"/api/v1/tenant-models/quotas?tenant_id={tenant}").json()
        used = next(q["used"] for q in quotas["quotas"] if q["quota_type"] == "daily")
        return (logged, used) if calls >= answered and used == logged else None

    logged, used = await wait_for(settled, timeout_s=30, interval_s=0.25, what="every call settled once")
    print(f"\ntwo quota replicas, two gateways ({sorted(gateways)}): 200 concurrent calls, {answered} answered, "
          f"{statuses.count(402)} refused (402); settled {used} tokens = the log's {logged}, limit 10,000")
    assert len(gateways) == 2, gateways
    assert used == logged <= 10_000 + 2 * (3 + 3 + 64 + 16 + 10)


async def _limits_known(http: httpx.AsyncClient, url: str, key: str) -> bool:
    reply = await http.get(f"{url}/api/v1/tenant-models/quotas", headers={"Authorization": f"Bearer {key}"})
    return reply.status_code == 200 and any(q["quota_type"] == "daily" for q in reply.json().get("quotas", []))
