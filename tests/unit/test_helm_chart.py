"""The Helm chart renders (Helm's own Go engine, from the helm-python-sdk wheel) into manifests that pass the
Kubernetes schemas of the version we target (kubernetes-validate, strict), with probes, a ServiceMonitor and
every service pointed at each NATS node as the services' NATS user, and NATS's users rendered into a Secret that
a real nats-server enforces.

The official NATS chart is a dependency fetched by `helm dependency update`, not kept here: our templates
are rendered without it (Helm renders a missing optional dependency as absent) and what we ask of it (a
3-node JetStream cluster that includes our users Secret) is checked in our values.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from switchyard_gateway.kit.nats_auth import BCRYPT, ROUTE_USER, SubscriberUser, inbox_prefix, permissions, with_user
from switchyard_gateway.kit.stack_nats import nats_binary
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import wait_for

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart (pip install -e '.[deploy-check]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="kubernetes-validate checks the manifests (pip install -e '.[deploy-check]')")

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "switchyard"
KUBERNETES = "1.31.0"
SERVICES = ("registry", "metering", "router", "quota", "gateway")
VALUES: dict[str, Any] = {
    "database": {"url": "postgresql://switchyard@postgres.data:5432/switchyard"},
    "redis": {"url": "redis://valkey.data:6379/0"},
    "secrets": {"adminKey": "sy_admin_chart_test", "jwtSecret": "chart-test-jwt-secret-of-at-least-32-bytes",
                "databasePassword": "chart-test-password",
                "natsPassword": "chart-test-nats-password", "natsRoutePassword": "chart-test-route-password"},
    "registryDocument": {"providers": [{"id": "local", "kind": "ollama"}]},
}


def render(values: dict[str, Any] | None = None, name: str = "sy") -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values if values is not None else VALUES, name=name, namespace="ai")
    return [doc for path, text in sorted(files.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def routes_from(secret: str) -> dict[str, Any]:
    """NATS values naming an existing Secret as the one the nodes read the routes' password from."""
    return {"container": {"env": {"SWITCHYARD_NATS_ROUTE_PASSWORD": {"valueFrom": {"secretKeyRef": {"name": secret}}}}}}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def test_every_manifest_passes_the_kubernetes_schemas() -> None:
    docs = render()
    assert {d["kind"] for d in docs} == {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service", "ServiceMonitor"}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue                                    # a CRD: checked below against what it selects
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_check_bites() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_each_service_runs_its_module_with_probes_on_its_own_health() -> None:
    workloads = by_kind(render(), "Deployment") + by_kind(render(), "StatefulSet")
    commands = {}
    for workload in workloads:
        container = workload["spec"]["template"]["spec"]["containers"][0]
        commands[container["name"]] = container["command"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"] == {"path": "/health/live", "port": "http"}, (container["name"], probe)
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert commands == {s: ["python", "-m", f"switchyard_gateway.services.{s}"] for s in SERVICES}
    gateway = by_kind(render(), "StatefulSet")[0]
    assert gateway["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "spool"   # a spool per gateway


def test_every_service_connects_to_each_nats_node_and_reads_secrets_from_files() -> None:
    docs = render()
    config = next(d for d in by_kind(docs, "ConfigMap") if "SWITCHYARD_NATS_URL" in d["data"])
    from switchyard_gateway.kit.settings import ServiceSettings as Settings, url_list

    servers = url_list(config["data"]["SWITCHYARD_NATS_URL"])
    assert servers == [f"nats://switchyard@sy-nats-{i}.sy-nats-headless:4222" for i in range(3)]
    assert Settings.from_env(config["data"]).stream_replicas == 3
    rendered = yaml.safe_dump_all(by_kind(docs, "ConfigMap"))
    assert "chart-test-password" not in rendered and "sy_admin_chart_test" not in rendered
    registry = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-registry"))
    env = {e["name"]: e.get("value") for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SWITCHYARD_ADMIN_KEY_FILE"] == "/run/secrets/switchyard/admin-key"
    assert env["SWITCHYARD_DATABASE_PASSWORD_FILE"] == "/run/secrets/switchyard/database-password"
    assert env["SWITCHYARD_REGISTRY_DOCUMENT"] == "/etc/switchyard/switchyard.yaml"


def _container_env(workload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A workload's container, and its env's values by name."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    return container, {e["name"]: e.get("value") for e in container["env"]}


def test_the_gateways_sign_tokens_with_the_jwt_secret_of_the_secret(tmp_path: Path) -> None:
    """Without a JWT secret, sign-in is disabled (503): each gateway reads the Secret's `jwt-secret` from its file."""
    from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings

    docs = render()
    gateway = by_kind(docs, "StatefulSet")[0]
    container, env = _container_env(gateway)
    secret = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "sy-switchyard-secrets")
    volume = next(v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")["secret"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    files = {f"{mount}/{item['path']}": secret["stringData"][item["key"]] for item in volume["items"]}
    assert env["SWITCHYARD_JWT_SECRET_FILE"] in files
    (tmp_path / "jwt-secret").write_text(files[env["SWITCHYARD_JWT_SECRET_FILE"]])
    read = GatewaySettings.from_env({"SWITCHYARD_JWT_SECRET_FILE": str(tmp_path / "jwt-secret")})
    assert read.jwt_secret == VALUES["secrets"]["jwtSecret"]
    for workload in by_kind(docs, "Deployment"):                      # the other services never see it
        assert "SWITCHYARD_JWT_SECRET_FILE" not in _container_env(workload)[1]
    assert VALUES["secrets"]["jwtSecret"] not in yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
    with pytest.raises(helm.HelmError, match="secrets.jwtSecret or secrets.existingSecret is required"):
        render({**VALUES, "secrets": {**VALUES["secrets"], "jwtSecret": ""}})
    with pytest.raises(helm.HelmError, match="secrets.jwtSecret: give at least 32 bytes"):
        render({**VALUES, "secrets": {**VALUES["secrets"], "jwtSecret": "x" * 31}})


def test_each_gateway_pod_runs_the_workers_the_values_give_one_by_default() -> None:
    """Unset, SWITCHYARD_WORKERS is one worker per CPU the node shows, whatever the pod's CPU limit."""
    from switchyard_gateway.services.gateway.settings import Settings as GatewaySettings

    for given, workers in ((None, 1), (4, 4)):
        values = VALUES if given is None else {**VALUES, "services": {"gateway": {"workers": given}}}
        _, env = _container_env(by_kind(render(values), "StatefulSet")[0])
        assert GatewaySettings.from_env({"SWITCHYARD_WORKERS": env["SWITCHYARD_WORKERS"]}).workers == workers


def test_service_monitor_scrapes_every_service_on_a_port_it_has() -> None:
    docs = render()
    monitor = by_kind(docs, "ServiceMonitor")[0]
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind(docs, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == sorted(SERVICES)
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected)


def test_nats_dependency_is_the_official_chart_as_a_three_node_jetstream_cluster() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (nats,) = chart["dependencies"]
    assert nats["name"] == "nats" and "nats-io" in nats["repository"] and nats["condition"] == "nats.enabled"
    values = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    cluster = values["config"]["cluster"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    assert cluster["merge"]["authorization"]["user"] == ROUTE_USER         # the routes' user compose's nodes use
    assert not cluster.get("routeURLs")                                     # the NATS chart's would be plain text
    assert values["config"]["jetstream"]["enabled"] is True and values["config"]["jetstream"]["fileStore"]["pvc"]


def test_an_external_nats_cluster_and_an_existing_secret() -> None:
    values = {**VALUES, "nats": {"enabled": False}, "natsUrls": ["nats://a:4222", "b:4222", "nats://ops@c:4222"],
              "secrets": {"existingSecret": "switchyard-prod", "natsPasswordHash": HASHED}}
    docs = render(values)
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == ["sy-switchyard-nats-users"]   # for that NATS
    config = next(d for d in by_kind(docs, "ConfigMap") if "SWITCHYARD_NATS_URL" in d["data"])
    assert config["data"]["SWITCHYARD_NATS_URL"] == "nats://switchyard@a:4222,nats://switchyard@b:4222,nats://ops@c:4222"
    volumes = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "secrets")["secret"]["secretName"] == "switchyard-prod"


def test_missing_required_values_fail_with_their_names() -> None:
    with pytest.raises(helm.HelmError, match="database.url is required"):
        render({**VALUES, "database": {"url": ""}})
    with pytest.raises(helm.HelmError, match="natsUrls"):
        render({**VALUES, "nats": {"enabled": False}})
    with pytest.raises(helm.HelmError, match="secrets.natsPassword or secrets.existingSecret is required"):
        render({**VALUES, "secrets": {**VALUES["secrets"], "natsPassword": ""}})
    with pytest.raises(helm.HelmError, match="secrets.natsPassword: give at least 16 characters"):
        render({**VALUES, "secrets": {**VALUES["secrets"], "natsPassword": "short"}})
    with pytest.raises(helm.HelmError, match="secrets.natsPasswordHash is required with secrets.existingSecret"):
        render({**VALUES, "secrets": {"existingSecret": "switchyard-prod"}, "nats": routes_from("switchyard-prod")})


def test_helm_lint_finds_nothing_but_the_dependency_left_to_fetch() -> None:
    report = helm.lint(str(CHART), VALUES, strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2 and "missing these dependencies: nats" not in m["error"]]
    assert problems == []


# ---- NATS users ----------------------------------------------------------------------------------

SUBSCRIBER_PASSWORD = "acme-bi-chart-password"
HASHED = "$2a$10$" + "x" * 53          # a bcrypt hash's shape; nothing checks a password against it here


def bcrypt_of(password: str) -> str:
    """A bcrypt hash made by the chart itself (Helm's bcrypt), as an operator would give one."""
    docs = render({**VALUES, "secrets": {**VALUES["secrets"], "natsPassword": password}})
    return next(u["password"] for u in users_of(docs) if u["user"] == "switchyard")


def users_conf(docs: list[dict[str, Any]]) -> str:
    secret = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-nats-users"))
    return secret["stringData"]["users.conf"]


def users_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The users of the rendered authorization block (one JSON object a line)."""
    text = users_conf(docs)
    assert re.match(r"\s*authorization \{\s*users = \[", text), text
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def with_subscribers(*subscribers: dict[str, str], **secrets: str) -> dict[str, Any]:
    return {**VALUES, "secrets": {**VALUES["secrets"], **secrets}, "natsUsers": {"subscribers": list(subscribers)}}


def test_subscribers_get_exactly_the_permissions_up_gives_them() -> None:
    billing = {"user": "billing", "name": "tenant-spend", "password": HASHED}
    acme = {"user": "acme-bi", "name": "acme-spend", "tenant": "acme", "password": HASHED}
    users = {u["user"]: u for u in users_of(render(with_subscribers(billing, acme)))}
    assert set(users) == {"switchyard", "billing", "acme-bi"}
    assert "permissions" not in users["switchyard"] and users["switchyard"]["password"].startswith("$2a$")
    for given in (billing, acme):
        expected = permissions(SubscriberUser(given["user"], given["password"], given["name"], given.get("tenant")))
        assert users[given["user"]]["permissions"] == expected, given["user"]


def test_the_rendered_users_are_what_a_real_nats_server_enforces(tmp_path: Path) -> None:
    hashed = bcrypt_of(SUBSCRIBER_PASSWORD)
    docs = render(with_subscribers({"user": "acme-bi", "name": "acme-spend", "tenant": "acme", "password": hashed}))
    (tmp_path / "users.conf").write_text(users_conf(docs))
    port = pick_free_port(set())
    server = subprocess.Popen([str(nats_binary()), "-c", str(tmp_path / "users.conf"), "-a", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(_users_hold(f"nats://127.0.0.1:{port}"))
    finally:
        server.terminate()
        server.wait(10)


async def _users_hold(url: str) -> None:
    async def up() -> bool:
        try:
            await (await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=1)).close()
        except nats.errors.Error as exc:
            return "authorization" in str(exc).lower()          # it answers, and wants a user
        except OSError:
            return False
        raise AssertionError("a client without a user was let in")
    await wait_for(up, timeout_s=20, interval_s=0.1, what="nats-server with the chart's users")
    services = await nats.connect(with_user(url, "switchyard", VALUES["secrets"]["natsPassword"]), allow_reconnect=False)
    await services.close()                                          # the password of the Secret, against its hash
    refusals: list[str] = []

    async def keep(exc: Exception) -> None:
        refusals.append(str(exc))
    subscriber = await nats.connect(with_user(url, "acme-bi", SUBSCRIBER_PASSWORD), inbox_prefix=inbox_prefix("acme-bi"),
                                    error_cb=keep, allow_reconnect=False)
    try:
        await subscriber.publish("usage.recorded.v2.acme", b"{}")
        await subscriber.flush()
        await wait_for(lambda: any('publish to "usage.recorded.v2.acme"' in e for e in refusals), timeout_s=10,
                       what="the subscriber refused a made-up usage event")
    finally:
        await subscriber.close()


def test_no_password_is_written_outside_the_secrets_and_nats_gets_hashes_only() -> None:
    docs = render(with_subscribers({"user": "acme-bi", "name": "acme-spend", "password": HASHED}))
    plain = VALUES["secrets"]["natsPassword"]
    holding = [d["metadata"]["name"] for d in docs if plain in yaml.safe_dump(d)]
    assert holding == ["sy-switchyard-secrets"]                      # the Secret the services mount, nowhere else
    assert all(u["password"].startswith("$2") for u in users_of(docs))
    existing = render({**with_subscribers(), "secrets": {"existingSecret": "prod", "natsPasswordHash": HASHED},
                       "nats": routes_from("prod")})
    text = yaml.safe_dump_all(existing)
    assert plain not in text and VALUES["secrets"]["databasePassword"] not in text
    assert [u["password"] for u in users_of(existing)] == [HASHED]
    for plain in ("hunter2-in-plain-text", "$2-starts-like-a-hash", HASHED[:-1], "$2a$1$" + "x" * 53):
        assert not BCRYPT.match(plain)                                       # nats-server would compare it as it is
        with pytest.raises(helm.HelmError, match=r"natsUsers.subscribers\[0\].password: a bcrypt hash"):
            render(with_subscribers({"user": "acme-bi", "name": "acme-spend", "password": plain}))
    for hashed in (HASHED, HASHED.replace("$2a$", "$2y$"), HASHED.replace("$2a$", "$2b$")):   # htpasswd -B gives $2y$
        assert BCRYPT.match(hashed)
        render(with_subscribers({"user": "acme-bi", "name": "acme-spend", "password": hashed}))
    with pytest.raises(helm.HelmError, match=r"natsUsers.subscribers\[1\].user: \"acme-bi\" is taken"):
        render(with_subscribers(*[{"user": "acme-bi", "name": "x", "password": HASHED}] * 2))
    with pytest.raises(helm.HelmError, match=r"natsUsers.subscribers\[0\].tenant: not a tenant id"):
        render(with_subscribers({"user": "b", "name": "x", "tenant": "Not A Tenant", "password": HASHED}))


def test_every_service_reads_the_nats_password_from_the_secret() -> None:
    docs = render()
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        pod = workload["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["SWITCHYARD_NATS_PASSWORD_FILE"] == "/run/secrets/switchyard/nats-password"
        secret = next(v for v in pod["volumes"] if v["name"] == "secrets")["secret"]
        assert secret["secretName"] == "sy-switchyard-secrets"
        assert {"key": "nats-password", "path": "nats-password"} in secret["items"]
    secret = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "sy-switchyard-secrets")
    assert secret["stringData"]["nats-password"] == VALUES["secrets"]["natsPassword"]


def test_without_nats_users_nats_asks_for_none_and_the_services_give_none() -> None:
    docs = render({**VALUES, "natsUsers": {"enabled": False}})
    assert "authorization" not in users_conf(docs)                  # the nodes' include still finds its file
    config = next(d for d in by_kind(docs, "ConfigMap") if "SWITCHYARD_NATS_URL" in d["data"])
    assert "@" not in config["data"]["SWITCHYARD_NATS_URL"]
    registry = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-registry"))
    assert "SWITCHYARD_NATS_PASSWORD_FILE" not in {e["name"] for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_nats_nodes_include_the_users_secret_of_this_release() -> None:
    nats_values = yaml.safe_load((CHART / "values.yaml").read_text())["nats"]
    (included,) = nats_values["config"]["merge"].values()
    (mount,) = [p["value"] for p in nats_values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    (volume,) = [p["value"] for p in nats_values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert volume["name"] == mount["name"]
    assert str((Path("/etc/nats-config") / included).resolve()) == f"{mount['mountPath']}/users.conf"
    expression = volume["secret"]["secretName"]["$tplYaml"]        # rendered by the NATS chart, in its own context
    for release in ("sy", "switchyard-prod"):
        ours = next(s["metadata"]["name"] for s in by_kind(render(name=release), "Secret")
                    if s["metadata"]["name"].endswith("-nats-users"))
        assert _render_in_another_chart(expression, release) == ours


def _render_in_another_chart(expression: str, release: str) -> str:
    """What a template expression gives in a chart of another name (the NATS chart) for this release."""
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "templates").mkdir()
        (Path(root) / "Chart.yaml").write_text("apiVersion: v2\nname: nats\nversion: 1.0.0\n")
        (Path(root) / "templates" / "name.yaml").write_text(f"name: {expression}\n")
        with helm.Chart.load(root) as chart:
            files = chart.render({}, name=release, namespace="ai")
    return yaml.safe_load(files["nats/templates/name.yaml"])["name"]
