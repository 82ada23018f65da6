"""The routes between the chart's NATS nodes ask for a user whose password lives in the Secret alone: rendered
with the official NATS chart (a Helm dependency, not kept in this repository: see NATS_CHART), the NATS configuration and every manifest hold no password, and
real nats-server nodes started on that configuration with the pod's environment form routes with the Secret's
password and refuse a node with another one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from switchyard_gateway.kit.nats_auth import MIN_PASSWORD, ROUTE_USER, with_user
from switchyard_gateway.kit.stack_nats import nats_binary
from switchyard_gateway.kit.stack_proc import pick_free_port
from tests.conftest import wait_for
from tests.unit.test_helm_chart import CHART, KUBERNETES, VALUES, by_kind, helm, kubernetes_validate, routes_from

def _official_nats_chart() -> Path | None:
    """The official NATS chart's package: $SWITCHYARD_NATS_CHART, or what `helm dependency build` put in the chart's
    charts/ folder. It comes from the NATS project's Helm repository, which this repository does not copy."""
    named = os.environ.get("SWITCHYARD_NATS_CHART")
    if named:
        return Path(named)
    return next(iter(sorted((CHART / "charts").glob("nats-*.tgz"))), None)


NATS_CHART = _official_nats_chart()
NO_CHART = ("the official NATS chart is not here (a Helm dependency from https://nats-io.github.io/k8s/helm/charts, "
            "not kept in this repository): run `helm dependency build deploy/helm/switchyard`, or set "
            "SWITCHYARD_NATS_CHART to its nats-1.x.tgz")
ROUTE_PASSWORD = "route-password-of-the-chart-test"
ROUTED: dict[str, Any] = {**VALUES, "secrets": {**VALUES["secrets"], "natsRoutePassword": ROUTE_PASSWORD}}
UNROUTED: dict[str, Any] = {**VALUES, "secrets": {k: v for k, v in VALUES["secrets"].items()
                                                  if k != "natsRoutePassword"}}
PASSWORD_VAR, URLS_VAR = "SWITCHYARD_NATS_ROUTE_PASSWORD", "SWITCHYARD_NATS_ROUTE_URLS"


def render_with_nats(tmp_path: Path, values: dict[str, Any], name: str = "sy") -> list[dict[str, Any]]:
    """Every manifest of the chart and of the official NATS chart as its dependency."""
    if NATS_CHART is None:
        pytest.skip(NO_CHART)
    chart = tmp_path / "chart"
    if not chart.exists():
        shutil.copytree(CHART, chart)
        (chart / "charts").mkdir(exist_ok=True)
        shutil.copy(NATS_CHART, chart / "charts")
    with helm.Chart.load(str(chart)) as loaded:
        files = loaded.render(values, name=name, namespace="ai")
    return [doc for path, text in sorted(files.items()) if path.endswith(".yaml") and "/tests/" not in path
            for doc in yaml.safe_load_all(text) if doc]


def nats_conf(docs: list[dict[str, Any]]) -> str:
    config = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-nats-config"))
    return config["data"]["nats.conf"]


def nats_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    nodes = next(d for d in by_kind(docs, "StatefulSet") if d["metadata"]["name"].endswith("-nats"))
    return next(c for c in nodes["spec"]["template"]["spec"]["containers"] if c["name"] == "nats")


def secret_data(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("stringData", {}) for d in by_kind(docs, "Secret")}


def pod_env(container: dict[str, Any], secrets: dict[str, dict[str, str]], pod: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: the pod's name, Secret keys, and `$(VAR)` filled in from
    the variables listed before it (a later one, or an unknown one, stays as written)."""
    env: dict[str, str] = {}
    for entry in container["env"]:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                                        entry.get("value", ""))
        elif "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = pod
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_the_nats_configuration_asks_routes_for_a_user_and_holds_no_password(tmp_path: Path) -> None:
    docs = render_with_nats(tmp_path, ROUTED)
    conf = nats_conf(docs)
    assert re.search(r'"cluster": \{\s*"authorization": \{\s*"password": \$SWITCHYARD_NATS_ROUTE_PASSWORD,\s*'
                     rf'"user": "{ROUTE_USER}"\s*\}}', conf), conf
    assert re.search(r'"routes": \$SWITCHYARD_NATS_ROUTE_URLS\s', conf), conf
    holding = [d["metadata"]["name"] for d in docs if ROUTE_PASSWORD in yaml.safe_dump(d)]
    assert holding == ["sy-switchyard-secrets"]                       # the Secret, nowhere else
    assert secret_data(docs)["sy-switchyard-secrets"]["nats-route-password"] == ROUTE_PASSWORD
    env = nats_container(docs)["env"]
    names = [e["name"] for e in env]
    assert names.index(PASSWORD_VAR) < names.index(URLS_VAR)          # $(...) refers only to what comes before
    assert env[names.index(PASSWORD_VAR)]["valueFrom"] == {
        "secretKeyRef": {"name": "sy-switchyard-secrets", "key": "nats-route-password"}}
    unmerged = {"config": {"cluster": {"merge": None}}, "container": {"env": None}}
    own = render_with_nats(tmp_path, {**ROUTED, "nats": unmerged})
    plain = re.search(r'"routes": (\[[^]]*\])', nats_conf(own))        # the official chart's routes, as it makes them
    assert plain, nats_conf(own)
    expected = [url.replace("://", f"://{ROUTE_USER}:$({PASSWORD_VAR})@") for url in json.loads(plain.group(1))]
    assert json.loads(env[names.index(URLS_VAR)]["value"]) == expected
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_routes_password_is_required_long_and_safe_in_a_url(tmp_path: Path) -> None:
    def routed(password: str) -> dict[str, Any]:
        return {**VALUES, "secrets": {**VALUES["secrets"], "natsRoutePassword": password}}
    with pytest.raises(helm.HelmError, match="secrets.natsRoutePassword or secrets.existingSecret is required"):
        render_with_nats(tmp_path, UNROUTED)
    with pytest.raises(helm.HelmError, match=f"secrets.natsRoutePassword: give at least {MIN_PASSWORD} characters"):
        render_with_nats(tmp_path, routed("r" * (MIN_PASSWORD - 1)))
    render_with_nats(tmp_path, routed("r" * MIN_PASSWORD))
    with pytest.raises(helm.HelmError, match=r"secrets.natsRoutePassword: only A-Z a-z 0-9 \. _ ~ -"):
        render_with_nats(tmp_path, routed("has@and:in-a-route-url"))
    existing = {**VALUES, "secrets": {"existingSecret": "switchyard-prod", "natsPasswordHash": "$2a$10$" + "x" * 53}}
    with pytest.raises(helm.HelmError, match="secretKeyRef.name=switchyard-prod"):
        render_with_nats(tmp_path, existing)
    docs = render_with_nats(tmp_path, {**existing, "nats": routes_from("switchyard-prod")})
    ref = next(e for e in nats_container(docs)["env"] if e["name"] == PASSWORD_VAR)["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "switchyard-prod", "key": "nats-route-password"}
    assert "nats-route-password" not in yaml.safe_dump_all(by_kind(docs, "Secret"))
    render_with_nats(tmp_path, {**VALUES, "nats": {"enabled": False}, "natsUrls": ["nats://a:4222"]})   # not ours


def test_the_default_secret_name_is_this_releases(tmp_path: Path) -> None:
    for release in ("sy", "switchyard-prod"):
        docs = render_with_nats(tmp_path, ROUTED, name=release)
        ref = next(e for e in nats_container(docs)["env"] if e["name"] == PASSWORD_VAR)["valueFrom"]["secretKeyRef"]
        assert "nats-route-password" in secret_data(docs)[ref["name"]], release


# ---- real nodes on the rendered configuration --------------------------------------------------------


class Node:
    """One nats-server on loopback as a pod of the chart's StatefulSet would run it: the rendered nats.conf and
    users.conf at the paths the pod mounts them (relative to each other), the pod's environment, and the pod's
    names resolved to loopback ports (the cluster's DNS)."""

    def __init__(self, root: Path, index: int, docs: list[dict[str, Any]], route_ports: list[int],
                 secrets: dict[str, dict[str, str]]) -> None:
        self.index, self.name = index, f"sy-nats-{index}"
        self.client, self.monitor = pick_free_port(set(route_ports)), pick_free_port(set(route_ports))
        home = root / self.name
        (home / "nats-config").mkdir(parents=True)
        (home / "switchyard-nats-users").mkdir()
        (home / "data").mkdir()
        conf = nats_conf(docs)
        for pod_path, here in (('"port": 6222', f'"port": {route_ports[index]}, "host": "127.0.0.1"'),   # the cluster's
                               ('"store_dir": "/data"', f'"store_dir": "{home / "data"}"'),             # the volumes
                               ('"pid_file": "/var/run/nats/nats.pid"', f'"pid_file": "{home / "nats.pid"}"')):
            assert conf.count(pod_path) == 1, (pod_path, conf)
            conf = conf.replace(pod_path, here)
        (home / "nats-config" / "nats.conf").write_text(conf)
        users = next(s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-nats-users"))
        (home / "switchyard-nats-users" / "users.conf").write_text(users["stringData"]["users.conf"])
        self.env = pod_env(nats_container(docs), secrets, self.name)
        for i, port in enumerate(route_ports):
            host = f"sy-nats-{i}.sy-nats-headless:6222"
            assert self.env[URLS_VAR].count(host) == 1, self.env[URLS_VAR]
            self.env[URLS_VAR] = self.env[URLS_VAR].replace(host, f"127.0.0.1:{port}")
        self.log = home / "nats.log"
        self.command = [str(nats_binary()), "-c", str(home / "nats-config" / "nats.conf"), "-a", "127.0.0.1",
                        "-p", str(self.client), "-m", str(self.monitor)]           # the client ports by flags
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def routes(self) -> list[str] | None:
        """The names of the nodes this one has routes to (None until it answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/routez", timeout=2) as answer:
                return sorted({r.get("remote_name", "") for r in json.load(answer)["routes"] or []})
        except OSError:
            return None

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    @property
    def url(self) -> str:
        return with_user(f"nats://127.0.0.1:{self.client}", "switchyard", VALUES["secrets"]["natsPassword"])


def test_nodes_route_with_the_secrets_password_and_refuse_a_node_with_another(tmp_path: Path) -> None:
    docs = render_with_nats(tmp_path, ROUTED)
    route_ports: list[int] = []
    for _ in range(3):
        route_ports.append(pick_free_port(set(route_ports)))
    wrong = {name: dict(keys) for name, keys in secret_data(docs).items()}
    wrong["sy-switchyard-secrets"]["nats-route-password"] = "not-the-route-password"
    keys = (secret_data(docs), secret_data(docs), wrong)
    nodes = [Node(tmp_path, i, docs, route_ports, keys[i]) for i in range(3)]
    assert ROUTE_PASSWORD in nodes[0].env[URLS_VAR] and "not-the-route-password" in nodes[2].env[URLS_VAR]
    try:
        for node in nodes:
            node.start()
        asyncio.run(_routes_hold(nodes))
    finally:
        for node in nodes:
            node.stop()


async def _routes_hold(nodes: list[Node]) -> None:
    good, other, intruder = nodes
    await wait_for(lambda: good.routes() == [other.name] and other.routes() == [good.name], timeout_s=60,
                   interval_s=0.2, what="a route between the two nodes with the Secret's password")
    publisher, subscriber = await nats.connect(good.url), await nats.connect(other.url)
    try:
        got: list[bytes] = []

        async def keep(msg: Any) -> None:
            got.append(msg.data)
        await subscriber.subscribe("routes.check", cb=keep)
        await subscriber.flush()

        async def delivered() -> bool:
            await publisher.publish("routes.check", b"over the route")
            await publisher.flush()
            return bool(got)
        await wait_for(delivered, timeout_s=30, interval_s=0.2, what="a message from one node to the other")
    finally:
        await publisher.close()
        await subscriber.close()
    # the intruder dials the good nodes and they dial it: both ways refused on the routes' authorization
    await wait_for(lambda: intruder.logged("Authorization Violation") and good.logged("authentication error"),
                   timeout_s=60, interval_s=0.2, what="the node with another password refused")
    assert intruder.routes() == [] and good.routes() == [other.name] and other.routes() == [good.name]
