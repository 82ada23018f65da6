"""compose.yaml holds up without a Docker engine: valid against the compose-spec schema, and its topology
started natively from its own environment (same variables, same URL lists) with the launcher `up` uses.

The native run maps each compose hostname and container port to a loopback port, each secret and
config to a file, and each image to what it runs: our services from the Dockerfile's ENV and the
compose environment, nats-server nodes from the pip binary with the compose command and the NATS
configuration the header's `switchyard nats-config` command writes (users, and routes that ask for
one), PostgreSQL and Valkey from the embedded launcher. The nginx front is left out here (the gateways
behind it are called directly); tests/e2e/test_compose_front.py runs it in front of the demo gateway.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import msgspec
import nats
import nats.errors
import pytest
import yaml

from switchyard_gateway.contracts import subjects
from switchyard_gateway.contracts.metering import ReplayPage, ReplayRequest
from switchyard_gateway.kit import natsio
from switchyard_gateway.kit.nats_auth import inbox_prefix, with_user
from switchyard_gateway.kit.settings import ServiceSettings as Settings
from switchyard_gateway.kit.stack import EmbeddedStack
from switchyard_gateway.kit.stack_nats import nats_binary
from switchyard_gateway.kit.stack_proc import pick_free_port
from switchyard_gateway.kit.supervisor import INFRASTRUCTURE, UPSTREAMS, Command, Supervisor
from switchyard_gateway.resp import Valkey
from tests.conftest import REPO, traversable_tempdir, wait_for

COMPOSE_FILE = REPO / "compose.yaml"
APP_COMMAND = ["python", "-m"]
EXTERNAL_HOSTS = {"host.docker.internal"}          # the Docker host: where the example document's Ollama is
SUBSCRIBER = ("team-bi", "team-bi-nats-secret", "team")   # a user, its password, its tenant (the document's)


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_schema() -> dict:
    schema = pytest.importorskip("check_jsonschema.builtin_schemas.vendor", reason="check-jsonschema ships the "
                                 "compose-spec schema (pip install -e '.[test]')")
    import importlib.resources

    return json.loads((importlib.resources.files(schema) / "compose-spec.json").read_text())


def schema_errors(document: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# ---- the file itself ---------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    assert schema_errors(compose()) == []
    broken = copy.deepcopy(compose())
    broken["services"]["metering"]["deploy"] = {"replica": 2}            # the check does bite
    broken["services"]["metering"]["depends_on"] = {"postgres": {"condition": "service_happy"}}
    errors = " ".join(schema_errors(broken))
    assert "'replica'" in errors and "service_happy" in errors


def test_every_dependency_waits_for_a_healthcheck() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for needed, condition in (service.get("depends_on") or {}).items():
            assert condition == {"condition": "service_healthy"}, (name, needed)
            assert services[needed].get("healthcheck", {}).get("test"), f"{needed} has no healthcheck"


def test_secrets_are_files_and_no_password_is_written_in_the_file() -> None:
    doc = compose()
    text = COMPOSE_FILE.read_text()
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), "a password inside a URL"
    assert set(doc["secrets"]) == {"admin_key", "db_password", "jwt_secret", "nats_password", "nats_config"}
    registry, postgres = doc["services"]["registry"], doc["services"]["postgres"]
    assert registry["environment"]["SWITCHYARD_ADMIN_KEY_FILE"] == "/run/secrets/admin_key"
    assert registry["environment"]["SWITCHYARD_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"
    for name, service in doc["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if variable.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                assert value.rsplit("/", 1)[1] in service["secrets"], (name, variable)


def test_nats_asks_every_client_for_a_user_and_every_node_reads_the_users_from_a_secret() -> None:
    services = compose()["services"]
    nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    assert len(nodes) == 3
    for name, node in nodes.items():
        assert node["secrets"] == ["nats_config"] and node["command"][:2] == ["-c", "/run/secrets/nats_config"]
        assert not {"--cluster", "--routes", "--user", "--pass"} & set(node["command"]), name   # --cluster clears route auth
    ours = {n: s for n, s in services.items() if s.get("command", [None])[:2] == APP_COMMAND}
    for name, service in ours.items():
        env = service["environment"]
        assert env["SWITCHYARD_NATS_PASSWORD_FILE"] == "/run/secrets/nats_password", name
        assert [url.split("@")[0] for url in env["SWITCHYARD_NATS_URL"].split(",")] == ["nats://switchyard"] * 3, name


def test_the_documented_nats_config_command_writes_a_configuration_nats_server_accepts(tmp_path: Path) -> None:
    argv = documented_nats_config()
    assert argv[argv.index("--users") + 1] == "deploy/compose/nats-users.yaml"
    assert argv[argv.index("--out") + 1] == compose()["secrets"]["nats_config"]["file"].removeprefix("./")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "nats_password").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "deploy" / "compose").mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "compose" / "nats-users.yaml", tmp_path / "deploy" / "compose")
    rendered = run_nats_config(argv, tmp_path, {})
    text = rendered.read_text()
    assert rendered.stat().st_mode & 0o777 == 0o600
    routes = re.findall(r'"nats://route:[^@"]+@([^"]+)"', text)
    nodes = [n for n, s in compose()["services"].items() if str(s.get("image", "")).startswith("nats:")]
    assert routes == [f"{node}:6222" for node in nodes]
    assert '"user": "switchyard"' in text and '"listen": "0.0.0.0:6222"' in text
    checked = subprocess.run([str(nats_binary()), "-c", str(rendered), "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    (tmp_path / "secrets" / "nats_password").write_text("short\n")       # a guessable password is refused
    refused = subprocess.run(nats_config_command(argv), capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1 and "at least 16" in refused.stderr


def documented_nats_config() -> list[str]:
    """The `switchyard nats-config ...` command compose.yaml's header tells the operator to run."""
    header = "\n".join(line[1:].strip() for line in COMPOSE_FILE.read_text().splitlines() if line.startswith("#"))
    found = re.search(r"^(switchyard nats-config .*?)$", header.replace("\\\n", " "), re.M)
    assert found, "compose.yaml's header names the nats-config command"
    return shlex.split(found.group(1))


def nats_config_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "switchyard_gateway.cli", *argv[1:]]


def run_nats_config(argv: list[str], cwd: Path, env: dict[str, str]) -> Path:
    """Run the documented command in `cwd` (where it finds its relative paths); the file it wrote."""
    done = subprocess.run(nats_config_command(argv), capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return cwd / argv[argv.index("--out") + 1]


def test_each_gateway_has_a_spool_of_its_own_and_one_front_door_is_published() -> None:
    services = compose()["services"]
    gateways = gateways_of(services)
    spools = [s["volumes"][0].split(":") for s in gateways.values()]
    assert len(gateways) >= 2 and len({volume for volume, _ in spools}) == len(gateways)
    assert {target for _, target in spools} == {_dockerfile_env()["SWITCHYARD_SPOOL_DIR"]}
    published = [n for n, s in services.items() if s.get("ports") and not s.get("profiles")]
    assert published == ["front"]
    front = (REPO / compose()["configs"]["front"]["file"]).read_text()
    assert all(f"server {gateway}:8080;" in front for gateway in gateways)


def gateways_of(services: dict) -> dict[str, dict]:
    return {n: s for n, s in services.items() if s.get("command", [])[-1:] == ["switchyard_gateway.services.gateway"]}


def test_each_gateway_gets_every_variable_of_the_gateway_environment_and_its_own_instance() -> None:
    """A merge key replaces whole keys: a gateway whose environment merges the services' alone loses the JWT secret
    (sign-in 503) and the forwarded-for trust (every client counted as the front door)."""
    doc = compose()
    shared = doc["x-gateway"]["environment"]
    assert {"SWITCHYARD_JWT_SECRET_FILE", "SWITCHYARD_TRUST_FORWARDED_FOR"} <= set(shared)
    gateways = gateways_of(doc["services"])
    assert len(gateways) >= 2
    for name, gateway in gateways.items():
        env = gateway["environment"]
        assert {k: env.get(k) for k in shared} == shared, name
        assert env["SWITCHYARD_INSTANCE"] == name


def test_the_front_door_takes_every_body_a_gateway_takes_so_the_gateway_answers_its_own_413() -> None:
    """nginx's 413 is an HTML page; the gateway's is in the door's shape: nginx's bound must be the larger."""
    from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings

    front = (REPO / compose()["configs"]["front"]["file"]).read_text()
    size, unit = re.search(r"^\s*client_max_body_size\s+(\d+)([kKmMgG]?);", front, re.MULTILINE).groups()
    front_bytes = int(size) * 1024 ** " kmg".index(unit.lower() or " ")
    for name, gateway in gateways_of(compose()["services"]).items():
        env = {k: v for k, v in gateway["environment"].items() if not k.endswith("_FILE")}    # secrets not here
        assert front_bytes > GatewaySettings.from_env(env).max_body_bytes, name


def test_observability_profile_scrapes_every_service_and_provisions_the_dashboard() -> None:
    doc = compose()
    ours = {n for n, s in doc["services"].items() if s.get("command", [None])[:2] == APP_COMMAND}
    scrape = yaml.safe_load((REPO / doc["configs"]["prometheus"]["file"]).read_text())
    names = {n for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
    assert names == ours
    assert {doc["services"][n]["profiles"][0] for n in ("prometheus", "grafana")} == {"observability"}
    assert doc["configs"]["grafana_dashboard"]["file"] == "./deploy/grafana/switchyard.json"
    targets = {c["target"] for c in doc["services"]["grafana"]["configs"]}
    provider = yaml.safe_load((REPO / doc["configs"]["grafana_dashboards"]["file"]).read_text())
    assert f"{provider['providers'][0]['options']['path']}/switchyard.json" in targets


def test_dockerfile_caches_dependencies_and_runs_unprivileged_with_a_healthcheck() -> None:
    lines = [line for line in _dockerfile_lines() if line.split()]
    keywords = [line.split()[0] for line in lines]
    first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY libs"))
    dependencies = next(i for i, line in enumerate(lines) if "requirements.txt" in line and line.startswith("RUN"))
    assert dependencies < first_code, "the dependency layer must come before the code"
    assert {"COPY libs ./libs", "COPY services ./services", "COPY cli ./cli"} <= set(lines)
    assert {"EXPOSE", "HEALTHCHECK", "CMD", "USER"} <= set(keywords)
    assert "/health/live" in next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "['project']['dependencies']" in lines[dependencies - 1] + lines[dependencies]  # pyproject's own list


def _dockerfile_lines() -> list[str]:
    """Logical lines of the Dockerfile (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in _dockerfile_lines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


# ---- the topology, natively --------------------------------------------------------------------


@dataclass
class Native:
    """compose.yaml mapped onto this machine: hostnames and container ports to loopback ports, paths to files."""

    root: Path
    doc: dict
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def port(self, host: str, container_port: int) -> int:
        key = (host, container_port)
        if key not in self.ports:
            self.ports[key] = pick_free_port(set(self.ports.values()))
        return self.ports[key]

    def value(self, text: str, own_host: str) -> str:
        """A compose value with every host:port, 0.0.0.0 and mounted path made local."""
        hosts = set(self.doc["services"]) | EXTERNAL_HOSTS

        def address(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            host = own_host if host == "0.0.0.0" else host
            return f"127.0.0.1:{self.port(host, port)}" if host in hosts else match.group(0)

        text = re.sub(r"([A-Za-z0-9_.-]+):(\d+)", address, text)
        for inside, outside in self.paths.items():
            text = text.replace(inside, str(outside))
        return "127.0.0.1" if text == "0.0.0.0" else text

    def instances(self, name: str) -> list[str]:
        replicas = (self.doc["services"][name].get("deploy") or {}).get("replicas", 1)
        return [name] if replicas == 1 else [f"{name}.{i}" for i in range(1, replicas + 1)]


def nats_command(native: Native, name: str) -> list[str]:
    """A compose nats node's command for the pip nats-server: its ports mapped, its store a dir, its configuration
    (the secret every node mounts) with this node's route port and its peers' mapped."""
    args = list(native.doc["services"][name]["command"])
    out: list[str] = []
    for flag, value in zip([None, *args], args):
        if flag in ("-p", "-m"):
            out.append(str(native.port(name, int(value))))
        elif flag == "-sd":
            out.append(str(native.root / name))
        elif flag == "-c":
            own = native.root / "nats-conf" / f"{name}.conf"
            own.parent.mkdir(exist_ok=True)
            own.write_text(native.value(Path(native.value(value, name)).read_text(), name))
            out.append(str(own))
        else:
            out.append(native.value(value, name))
    return [str(nats_binary()), *out]


def app_env(native: Native, name: str, instance: str) -> dict[str, str]:
    """The container's environment: the Dockerfile's ENV, then compose's, mapped; each instance its own port."""
    env = {**_dockerfile_env(), **{k: str(v) for k, v in native.doc["services"][name]["environment"].items()}}
    env = {k: native.value(v, name) for k, v in env.items()}
    env["SWITCHYARD_PORT"] = str(native.port(instance, int(env["SWITCHYARD_PORT"])))
    for volume in native.doc["services"][name].get("volumes", []):
        volume_name, target = volume.split(":")
        env = {k: v.replace(target, str(native.root / volume_name)) for k, v in env.items()}
    return env


@pytest.fixture(scope="module")
def native() -> Iterator[tuple[Native, Supervisor, str]]:
    doc = compose()
    root = traversable_tempdir("switchyard-compose-")
    native = Native(root, doc)
    secrets = {name: f"sy_compose_{name}_{time.monotonic_ns()}" for name in doc["secrets"]}
    for name, value in secrets.items():
        (root / "secrets").mkdir(exist_ok=True)
        (root / "secrets" / name).write_text(value + "\n")
        native.paths[f"/run/secrets/{name}"] = root / "secrets" / name
    user, password, tenant = SUBSCRIBER                 # the operator's subscribers, then the header's command
    (root / "deploy" / "compose").mkdir(parents=True)
    (root / "deploy" / "compose" / "nats-users.yaml").write_text(
        f"subscribers:\n  - {{user: {user}, password: '${{TEAM_BI_NATS_PASSWORD}}', name: {tenant}-spend, "
        f"tenant: {tenant}}}\n")
    run_nats_config(documented_nats_config(), root, {"TEAM_BI_NATS_PASSWORD": password})
    for service in doc["services"].values():
        for config in service.get("configs", []):
            native.paths[config["target"]] = root / "configs" / config["source"]
    (root / "configs").mkdir()
    for name, config in doc["configs"].items():
        (root / "configs" / name).write_text(native.value((REPO / config["file"]).read_text(), name))

    supervisor = Supervisor(echo=False)
    stack: EmbeddedStack | None = None
    try:
        nodes = [n for n, s in doc["services"].items() if str(s.get("image", "")).startswith("nats:")]
        for node in nodes:
            supervisor.add(Command(node, nats_command(native, node), {}, root / "logs" / f"{node}.log",
                                   tier=INFRASTRUCTURE))
        asyncio.run(_healthy(native, nodes, supervisor))      # what depends_on: service_healthy waits for
        cluster = native.value(doc["x-service"]["environment"]["SWITCHYARD_NATS_URL"], "")
        stack = EmbeddedStack(root / "stack", nats_url=cluster, durable=False,
                              ports={"postgres": native.port("postgres", 5432), "valkey": native.port("valkey", 6379)})
        urls = stack.start()
        asyncio.run(_app_role(urls.database_url, doc["services"]["postgres"]["environment"]["POSTGRES_USER"],
                              secrets["db_password"]))
        # compose's Valkey asks for no password (only the stack's own network reaches it): the stand-in neither
        asyncio.run(_no_password(urls.redis_url))
        upstream = native.port("host.docker.internal", 11434)
        supervisor.add(Command("upstream", [sys.executable, "-m", "switchyard_gateway.simulator", "--host", "127.0.0.1",
                                            "--port", str(upstream)], {}, root / "logs" / "upstream.log", tier=UPSTREAMS))
        for name, service in doc["services"].items():
            if service.get("command", [None])[:2] != APP_COMMAND:
                continue
            for instance in native.instances(name):
                supervisor.add(Command(instance, [sys.executable, *service["command"][1:]],
                                       app_env(native, name, instance), root / "logs" / f"{instance}.log"))
        yield native, supervisor, secrets["admin_key"]
    finally:
        supervisor.stop()
        if stack is not None:
            stack.stop()
        shutil.rmtree(root, ignore_errors=True)


async def _no_password(redis_url: str) -> None:
    valkey = Valkey(redis_url)
    try:
        assert await valkey.call("CONFIG", "SET", "requirepass", "") == "OK"
    finally:
        await valkey.close()


async def _healthy(native: Native, nodes: list[str], supervisor: Supervisor) -> None:
    """Wait until each NATS node passes its compose healthcheck (/healthz on its monitoring port: JetStream up,
    which a clustered node is once the nodes have routed to each other, as their users)."""
    (url,) = [part for part in native.doc["x-nats"]["healthcheck"]["test"] if part.startswith("http://")]
    path = url.split("8222", 1)[1]
    async with httpx.AsyncClient(timeout=2) as client:
        for node in nodes:
            async def healthy(node: str = node) -> bool:
                supervisor.poll()
                try:
                    reply = await client.get(f"http://127.0.0.1:{native.port(node, 8222)}{path}")
                except httpx.HTTPError:
                    return False
                return reply.status_code == 200
            await wait_for(healthy, timeout_s=60, interval_s=0.2, what=f"{node} healthy")


async def _app_role(admin_url: str, user: str, password: str) -> None:
    """What the postgres image does with POSTGRES_USER and POSTGRES_PASSWORD_FILE."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{password}'")
    finally:
        await conn.close()


async def test_compose_topology_starts_natively_from_its_own_environment(native) -> None:
    topology, supervisor, admin_key = native
    doc = topology.doc
    instances = [i for n, s in doc["services"].items() if s.get("command", [None])[:2] == APP_COMMAND
                 for i in topology.instances(n)]
    assert len(instances) == 10                      # 2 x registry, metering, router, quota; 2 gateways

    async def all_live() -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            for instance in instances:
                supervisor.poll()
                try:
                    reply = await client.get(f"http://127.0.0.1:{topology.ports[(instance, 8080)]}/health/live")
                except httpx.HTTPError:
                    return False
                if reply.status_code != 200:
                    return False
        return True

    await wait_for(all_live, timeout_s=120, interval_s=0.5, what="every instance live")
    assert all(w.restarts == 0 for w in supervisor.watches.values()), \
        {n: w.history for n, w in supervisor.watches.items() if w.restarts}

    gateways = [f"http://127.0.0.1:{topology.ports[(g, 8080)]}" for g in ("gateway-1", "gateway-2")]
    admin = {"Authorization": f"Bearer {admin_key}"}            # the admin key came from the secret file
    async with httpx.AsyncClient(timeout=30) as client:
        tenants = await wait_for(lambda: _tenants(client, gateways[0], admin), timeout_s=30, what="the document")
        assert "team" in tenants                                # the registry applied the document at start
        issued = await client.post(f"{gateways[0]}/api/admin/tenants/team/keys", headers=admin, json={"name": "c"})
        key = {"Authorization": f"Bearer {issued.json()['key']}"}
        for gateway in gateways:
            async def answered(gateway: str = gateway) -> bool:
                reply = await client.post(f"{gateway}/v1/chat/completions", headers=key, json={
                    "model": "llama3.2", "messages": [{"role": "user", "content": "through compose"}]})
                return reply.status_code == 200
            await wait_for(answered, timeout_s=60, interval_s=0.5, what=f"a chat answer through {gateway}")

    settings = Settings.from_env(app_env(topology, "metering", "metering.1"))
    assert len(settings.nats_servers) == 3
    nc = await natsio.connect(settings.nats_url, "tests-compose", 10)
    try:
        js = nc.jetstream()
        for stream in subjects.STREAMS:
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3 and info.cluster is not None and len(info.cluster.replicas) == 2
    finally:
        await nc.close()

    async def two_usage_rows() -> bool:
        conn = await asyncpg.connect(settings.database_url)         # the password joined from the secret file
        try:
            return await conn.fetchval("SELECT count(*) FROM events WHERE type = 'usage.recorded.v2'") >= 2
        finally:
            await conn.close()

    await wait_for(two_usage_rows, timeout_s=30, what="the two calls in the log")
    await _a_subscriber_replays_its_tenant_and_nothing_more(topology)


async def _a_subscriber_replays_its_tenant_and_nothing_more(topology: Native) -> None:
    """NATS holds every client to its user: the subscriber's replays its tenant's events through its door;
    publishing a usage event, a registry command or asking for every tenant's pages is refused it; a client
    without a user, or a route without one, is turned away."""
    user, password, tenant = SUBSCRIBER
    bare = f"nats://127.0.0.1:{topology.ports[('nats-1', 4222)]}"
    refusals: list[str] = []

    async def keep(exc: Exception) -> None:
        refusals.append(str(exc).lower())

    nc = await nats.connect(with_user(bare, user, password), inbox_prefix=inbox_prefix(user), error_cb=keep,
                            allow_reconnect=False)
    try:
        reply = await nc.request(subjects.subscriber_subject(user, f"{tenant}-spend", tenant, "replay"),
                                 msgspec.json.encode(ReplayRequest()), timeout=10)
        page = msgspec.json.decode(reply.data, type=ReplayPage)
        events = [json.loads(bytes(raw)) for raw in page.events]
        assert {e.get("tenant_id") for e in events} == {tenant}
        assert sum(e["type"] == subjects.USAGE_RECORDED for e in events) >= 2     # the calls above, metered
        for subject in (f"{subjects.USAGE_RECORDED}.{tenant}", subjects.REGISTRY_COMMAND,   # made-up usage, a command,
                        subjects.subscriber_subject(user, f"{tenant}-spend", None, "replay")):   # everyone's
            await nc.publish(subject, b"{}")
            await nc.flush()

            def refused(subject: str = subject) -> bool:
                return any(f'permissions violation for publish to "{subject}"' in error for error in refusals)
            await wait_for(refused, timeout_s=10, what=f"NATS refusing {user} {subject}")
    finally:
        await nc.close()
    with pytest.raises(nats.errors.Error, match="(?i)authorization"):          # no user at all
        await nats.connect(bare, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    assert await _route_without_a_user(topology.ports[("nats-1", 6222)]) == "-ERR 'Authorization Violation'"


async def _route_without_a_user(port: int) -> str:
    """What a node answers a route that connects to its cluster port presenting no user."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await asyncio.wait_for(reader.readline(), 10)                           # the node's INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"name":"rogue","cluster":"switchyard"}\r\nPING\r\n')
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
    finally:
        writer.close()


async def _tenants(client: httpx.AsyncClient, gateway: str, headers: dict[str, str]) -> set[str] | None:
    reply = await client.get(f"{gateway}/api/admin/tenants", headers=headers)
    return {t["tenant_id"] for t in reply.json()} if reply.status_code == 200 else None
