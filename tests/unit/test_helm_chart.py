"""The Helm chart renders (Helm's own Go engine, from the helm-python-sdk wheel) into manifests that pass the
Kubernetes schemas of the version we target (kubernetes-validate, strict), with probes, a ServiceMonitor and
every service pointed at each NATS node.

The official NATS chart is a dependency fetched by `helm dependency update`, not kept here: our templates
are rendered without it (Helm renders a missing optional dependency as absent) and what we ask of it (a
3-node JetStream cluster) is checked in our values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart (pip install -e '.[deploy-check]')")
kubernetes_validate = pytest.importorskip("kubernetes_validate",
                                          reason="kubernetes-validate checks the manifests (pip install -e '.[deploy-check]')")

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "switchyard"
KUBERNETES = "1.31.0"
SERVICES = ("registry", "metering", "router", "quota", "gateway")
VALUES: dict[str, Any] = {
    "database": {"url": "postgresql://switchyard@postgres.data:5432/switchyard"},
    "redis": {"url": "redis://valkey.data:6379/0"},
    "secrets": {"adminKey": "sy_admin_chart_test", "databasePassword": "chart-test-password"},
    "registryDocument": {"providers": [{"id": "local", "kind": "ollama"}]},
}


def render(values: dict[str, Any] | None = None, name: str = "sy") -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values if values is not None else VALUES, name=name, namespace="ai")
    return [doc for path, text in sorted(files.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


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
    assert servers == [f"nats://sy-nats-{i}.sy-nats-headless:4222" for i in range(3)]
    assert Settings.from_env(config["data"]).stream_replicas == 3
    rendered = yaml.safe_dump_all(by_kind(docs, "ConfigMap"))
    assert "chart-test-password" not in rendered and "sy_admin_chart_test" not in rendered
    registry = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-registry"))
    env = {e["name"]: e.get("value") for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SWITCHYARD_ADMIN_KEY_FILE"] == "/run/secrets/switchyard/admin-key"
    assert env["SWITCHYARD_DATABASE_PASSWORD_FILE"] == "/run/secrets/switchyard/database-password"
    assert env["SWITCHYARD_REGISTRY_DOCUMENT"] == "/etc/switchyard/switchyard.yaml"


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
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["enabled"] is True and values["config"]["jetstream"]["fileStore"]["pvc"]


def test_an_external_nats_cluster_and_an_existing_secret() -> None:
    values = {**VALUES, "nats": {"enabled": False}, "natsUrls": ["nats://a:4222", "nats://b:4222"],
              "secrets": {"existingSecret": "switchyard-prod"}}
    docs = render(values)
    assert by_kind(docs, "Secret") == []
    config = next(d for d in by_kind(docs, "ConfigMap") if "SWITCHYARD_NATS_URL" in d["data"])
    assert config["data"]["SWITCHYARD_NATS_URL"] == "nats://a:4222,nats://b:4222"
    volumes = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "secrets")["secret"]["secretName"] == "switchyard-prod"


def test_missing_required_values_fail_with_their_names() -> None:
    with pytest.raises(helm.HelmError, match="database.url is required"):
        render({**VALUES, "database": {"url": ""}})
    with pytest.raises(helm.HelmError, match="natsUrls"):
        render({**VALUES, "nats": {"enabled": False}})


def test_helm_lint_finds_nothing_but_the_dependency_left_to_fetch() -> None:
    report = helm.lint(str(CHART), VALUES, strict=True, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2 and "missing these dependencies: nats" not in m["error"]]
    assert problems == []
