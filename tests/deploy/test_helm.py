"""The Helm chart: helm lint, helm template, kubeconform against the Kubernetes schemas, and the
rendered settings file accepted by the real settings loader and ``klag-pipeline check``."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import kafka_local, tools
from klag_pipeline.settings.loader import load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "klag-pipeline"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
ALERTS_FILE = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RELEASE = "klag-pipeline"
# No JSON schema for the Prometheus Operator CRDs is obtainable here; their content is checked
# below instead (rules by promtool, ServiceMonitor against the Service it selects, PodMonitor
# against the pods).
CRD_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
TOOL_TIMEOUT = 120.0

VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.stem for p in CI_VALUES)]


def run_tool(argv: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def helm_template(
    values_file: Path | None = None,
    *,
    sets: Sequence[str] = (),
    extra_values: Mapping[str, Any] | None = None,
    tmp_path: Path | None = None,
) -> list[dict[str, Any]]:
    argv = [str(tools.tool_path("helm")), "template", RELEASE, str(CHART)]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    if extra_values is not None:
        assert tmp_path is not None
        extra = tmp_path / "extra-values.yaml"
        extra.write_text(yaml.safe_dump(dict(extra_values)), encoding="utf-8")
        argv += ["-f", str(extra)]
    for item in sets:
        argv += ["--set", item]
    result = run_tool(argv)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(documents, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container_environ(deployment: dict[str, Any]) -> dict[str, str]:
    """The environment the pod would get: literal values, and a stand-in for each Secret key."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    environ: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            environ[var["name"]] = f"secret-{ref['name']}-{ref['key']}"
    return environ


# -- helm lint / template / kubeconform ----------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(values_file: Path | None) -> None:
    argv = [str(tools.tool_path("helm")), "lint", "--strict", str(CHART)]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    result = run_tool(argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("kubernetes_version", tools.KUBERNETES_SCHEMA_VERSIONS)
@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_manifests_match_kubernetes_schemas(
    values_file: Path | None, kubernetes_version: str
) -> None:
    argv = [str(tools.tool_path("helm")), "template", RELEASE, str(CHART)]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    rendered = run_tool(argv)
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    result = run_tool(
        [
            str(tools.tool_path("kubeconform")),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            kubernetes_version,
            "-schema-location",
            tools.kubeconform_schema_location(),
            "-skip",
            ",".join(CRD_KINDS),
            "-",
        ],
        stdin=rendered.stdout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    crds = sum(1 for d in documents if d["kind"] in CRD_KINDS)
    # Everything but the CRDs was really validated: nothing silently skipped for a missing schema.
    assert summary["valid"] == len(documents) - crds, summary
    assert summary["skipped"] == crds, summary


def test_kubeconform_rejects_an_invalid_manifest(tmp_path: Path) -> None:
    # Guards the schema set-up itself: with broken schemas every manifest would be "skipped" or
    # "valid", and the test above would prove nothing.
    documents = helm_template()
    deployment = one(documents, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {
        "name": "http"
    }
    deployment["spec"]["replicas"] = "two"
    result = run_tool(
        [
            str(tools.tool_path("kubeconform")),
            "-strict",
            "-kubernetes-version",
            tools.KUBERNETES_SCHEMA_VERSIONS[-1],
            "-schema-location",
            tools.kubeconform_schema_location(),
            "-",
        ],
        stdin=yaml.safe_dump(deployment),
    )
    assert result.returncode != 0
    assert "replicas" in result.stdout


# -- the settings file in the ConfigMap ----------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_settings_are_accepted_by_the_loader(
    values_file: Path | None, tmp_path: Path
) -> None:
    documents = helm_template(values_file)
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(one(documents, "ConfigMap")["data"]["settings.toml"], "utf-8")
    environ = container_environ(one(documents, "Deployment"))

    loaded = load_settings(settings_file, environ)

    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))
    if values_file is not None:
        override = yaml.safe_load(values_file.read_text("utf-8"))
        if "clusters" in override.get("settings", {}):
            values["settings"]["clusters"] = override["settings"]["clusters"]
    expected = [c["name"] for c in values["settings"]["clusters"]]
    assert [c.name for c in loaded.settings.clusters] == expected
    assert loaded.warnings == ()


def test_secret_references_and_dotted_keys_reach_the_settings(tmp_path: Path) -> None:
    documents = helm_template(CHART / "ci" / "secrets-values.yaml")
    deployment = one(documents, "Deployment")
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(one(documents, "ConfigMap")["data"]["settings.toml"], "utf-8")
    # The password is only a ${VAR} reference in the ConfigMap; the value comes from a Secret.
    assert "secret-kafka-credentials" not in settings_file.read_text("utf-8")

    settings = load_settings(settings_file, container_environ(deployment)).settings

    properties = settings.clusters[0].consumer_properties
    assert properties["security.protocol"] == "SASL_SSL"
    assert properties["sasl.mechanism"] == "SCRAM-SHA-512"
    assert properties["sasl.password"] == "secret-kafka-credentials-password"
    assert properties["ssl.ca.location"] == "/etc/kafka-tls/ca.crt"
    assert settings.exporter.poll_interval == 20.0  # KLAG_EXPORTER__POLL_INTERVAL from env
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "kafka-tls", "mountPath": "/etc/kafka-tls", "readOnly": True} in mounts


def test_klag_pipeline_check_accepts_the_rendered_settings(tmp_path: Path) -> None:
    documents = helm_template(CHART / "ci" / "secrets-values.yaml")
    rendered = one(documents, "ConfigMap")["data"]["settings.toml"]
    # `check` builds the TLS context, so the CA the pod gets from its mounted Secret must exist:
    # stand a real CA in for it at a path under tmp_path.
    mounted_ca = "/etc/kafka-tls/ca.crt"
    assert mounted_ca in rendered
    ca = kafka_local.generate_tls_files(tmp_path / "tls").ca_cert
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(rendered.replace(mounted_ca, str(ca)), "utf-8")
    environ = container_environ(one(documents, "Deployment"))
    result = subprocess.run(
        [sys.executable, "-m", "klag_pipeline", "check", str(settings_file)],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without the Secret's variables the reference is an error naming the variable: exit 2.
    missing = subprocess.run(
        [sys.executable, "-m", "klag_pipeline", "check", str(settings_file)],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "KAFKA_SASL_PASSWORD" in missing.stdout + missing.stderr


def test_toml_rendering_round_trips_awkward_values(tmp_path: Path) -> None:
    cluster = {
        "name": 'quote " back\\slash ünïcode',
        "bootstrap_servers": "a:9092,b:9092",
        "consumer_properties": {
            "request.timeout.ms": "30000",
            "client.id": "tab\there",
            "sasl.kerberos.service.name": "kafka",
        },
        "labels": {"env": "<prod & co>"},
        "topic_blacklist": ["__.*", "^\\d+$"],
    }
    exporter = {
        "http_port": 9308,
        "poll_interval": "1m 30s",
        "staleness_threshold": None,
        "jsonl": {"enabled": False, "rotate_bytes": 1048576, "keep_files": 3},
        "performance": {"queue_capacity": 8},
    }
    documents = helm_template(
        extra_values={"settings": {"exporter": exporter, "clusters": [cluster]}},
        tmp_path=tmp_path,
    )
    text = one(documents, "ConfigMap")["data"]["settings.toml"]
    parsed = tomllib.loads(text)

    assert parsed["clusters"][0]["name"] == cluster["name"]
    assert parsed["clusters"][0]["consumer_properties"] == cluster["consumer_properties"]
    assert parsed["clusters"][0]["labels"] == cluster["labels"]
    assert parsed["clusters"][0]["topic_blacklist"] == cluster["topic_blacklist"]
    # Helm reads YAML numbers as floats; the exporter needs TOML integers.
    assert parsed["exporter"]["http_port"] == 9308
    assert isinstance(parsed["exporter"]["http_port"], int)
    assert parsed["exporter"]["jsonl"]["rotate_bytes"] == 1048576
    assert "staleness_threshold" not in parsed["exporter"]  # null → the exporter's default
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(text, "utf-8")
    settings = load_settings(settings_file, {}).settings
    assert settings.exporter.http_port == 9308
    assert settings.exporter.poll_interval == 90.0
    assert settings.clusters[0].bootstrap_servers == ("a:9092", "b:9092")
    container = one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 9308


# -- Deployment, RBAC, monitoring objects --------------------------------------------------------


def test_deployment_is_hardened_and_probed() -> None:
    documents = helm_template()
    pod = one(documents, "Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["args"][:2] == ["run", "/etc/klag-pipeline/settings.toml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["settings"] == "/etc/klag-pipeline"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]["memory"]


def test_config_checksum_follows_the_settings() -> None:
    def checksum(*sets: str) -> str:
        deployment = one(helm_template(sets=sets), "Deployment")
        annotations: dict[str, str] = deployment["spec"]["template"]["metadata"]["annotations"]
        return annotations["checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum("settings.exporter.poll_interval=45s")


def test_leadership_on_kubernetes_gets_a_lease_role_and_token() -> None:
    documents = helm_template(CHART / "ci" / "leadership-values.yaml")
    role = one(documents, "Role")
    binding = one(documents, "RoleBinding")
    account = one(documents, "ServiceAccount")
    deployment = one(documents, "Deployment")

    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert {"get", "create", "update"} <= verbs
    assert all(rule["apiGroups"] == ["coordination.k8s.io"] for rule in role["rules"])
    assert all(rule["resources"] == ["leases"] for rule in role["rules"])
    named = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert named[0]["resourceNames"] == ["klag-pipeline-ci"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert deployment["spec"]["replicas"] == 2
    # Standbys answer /ready with 503 by design; readiness on /health keeps them drainable.
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    assert one(documents, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize(
    "sets",
    [
        (),
        (
            "settings.exporter.leadership.enabled=true",
            "settings.exporter.leadership.provider=kafka",
        ),
    ],
    ids=["leadership-off", "kafka-provider"],
)
def test_no_kubernetes_permissions_without_the_kubernetes_provider(sets: tuple[str, ...]) -> None:
    documents = helm_template(sets=sets)
    assert by_kind(documents, "Role") == []
    assert by_kind(documents, "RoleBinding") == []
    pod = one(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False


def test_service_monitor_scrapes_the_service() -> None:
    documents = helm_template(CHART / "ci" / "monitoring-values.yaml")
    monitor = one(documents, "ServiceMonitor")
    service = one(documents, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True


def test_prometheus_rule_is_the_alerts_file_and_passes_promtool(tmp_path: Path) -> None:
    documents = helm_template(sets=["prometheusRule.enabled=true"])
    rule = one(documents, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text("utf-8"))

    custom = one(helm_template(CHART / "ci" / "monitoring-values.yaml"), "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(custom["spec"]), "utf-8")
    result = run_tool([str(tools.tool_path("promtool")), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {r["alert"]: r for g in custom["spec"]["groups"] for r in g["rules"]}
    assert "> 900" in alerts["KafkaConsumerGroupTimeLagHigh"]["expr"]
    assert alerts["KafkaConsumerGroupTimeLagHigh"]["for"] == "10m"
    assert alerts["KafkaConsumerGroupDataLoss"]["labels"]["team"] == "streaming"


# -- sharded mode --------------------------------------------------------------------------------

SHARDING_VALUES = CHART / "ci" / "sharding-values.yaml"


def test_sharded_mode_renders_the_sharding_table_and_the_loader_takes_it(tmp_path: Path) -> None:
    documents = helm_template(SHARDING_VALUES)
    text = one(documents, "ConfigMap")["data"]["settings.toml"]
    parsed = tomllib.loads(text)
    assert parsed["exporter"]["sharding"] == {
        "enabled": True,
        "cluster": "primary",
        "group_id": "klag-pipeline-ci-shards",
        "buckets": 128,
        "session_timeout": "20s",
        "heartbeat_interval": "4s",
    }
    assert parsed["exporter"]["leadership"]["enabled"] is False
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(text, "utf-8")
    deployment = one(documents, "Deployment")

    sharding = load_settings(
        settings_file, container_environ(deployment)
    ).settings.exporter.sharding

    assert sharding.enabled is True
    assert sharding.cluster == "primary"
    assert sharding.group_id == "klag-pipeline-ci-shards"
    assert sharding.buckets == 128
    assert (sharding.session_timeout, sharding.heartbeat_interval) == (20.0, 4.0)
    # No identity in the file: each pod is known by its POD_NAME (downward API).
    assert sharding.identity is None
    pod = deployment["spec"]["template"]["spec"]
    env = {v["name"]: v for v in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert deployment["spec"]["replicas"] == 3
    # An unassigned replica is not ready: a rollout waits for each new pod to own buckets.
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/ready"
    # Sharding needs no Kubernetes permission.
    assert by_kind(documents, "Role") == []
    assert pod["automountServiceAccountToken"] is False


def test_sharded_mode_defaults_are_the_exporters() -> None:
    # values.yaml spells out the exporter's defaults; the rendered table must equal them.
    text = one(helm_template(sets=["settings.exporter.sharding.enabled=true"]), "ConfigMap")
    parsed = tomllib.loads(text["data"]["settings.toml"])
    reference = tomllib.loads((ROOT / "config" / "settings.reference.toml").read_text("utf-8"))
    assert parsed["exporter"]["sharding"] == {**reference["exporter"]["sharding"], "enabled": True}


def test_pod_monitor_scrapes_every_pod() -> None:
    documents = helm_template(SHARDING_VALUES)
    monitor = one(documents, "PodMonitor")
    deployment = one(documents, "Deployment")
    assert by_kind(documents, "ServiceMonitor") == []
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # It selects the pods themselves (not the Service, which only routes to one pod per scrape).
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert selector.items() <= deployment["spec"]["selector"]["matchLabels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [
        deployment["metadata"]["namespace"]
    ]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["honorLabels"] is True
    # The job label the alerts select by default (job="<full name>", as with the ServiceMonitor).
    (job,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert job["replacement"] == RELEASE
    rules = one(documents, "PrometheusRule")["spec"]["groups"]
    down = next(r for g in rules for r in g["rules"] if r["alert"] == "KlagPipelineExporterDown")
    assert f'job="{RELEASE}"' in down["expr"]


def test_pod_disruption_budget_covers_the_shards() -> None:
    documents = helm_template(SHARDING_VALUES)
    budget = one(documents, "PodDisruptionBudget")
    deployment = one(documents, "Deployment")
    assert budget["spec"]["maxUnavailable"] == 1
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (
            ["settings.exporter.leadership.enabled=true"],
            "settings.exporter.sharding.enabled and settings.exporter.leadership.enabled are "
            "both true",
        ),
        (
            [
                "settings.exporter.leadership.enabled=true",
                "settings.exporter.leadership.provider=kafka",
            ],
            "settings.exporter.sharding.enabled and settings.exporter.leadership.enabled are "
            "both true",
        ),
        (["serviceMonitor.enabled=true"], "podMonitor.enabled and serviceMonitor.enabled"),
    ],
    ids=["with-kubernetes-leadership", "with-kafka-leadership", "with-both-monitors"],
)
def test_sharded_mode_refuses_conflicting_values(sets: list[str], complaint: str) -> None:
    argv = [
        str(tools.tool_path("helm")),
        "template",
        RELEASE,
        str(CHART),
        "-f",
        str(SHARDING_VALUES),
    ]
    for item in sets:
        argv += ["--set", item]
    result = run_tool(argv)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_leadership_alone_still_renders() -> None:
    # The guard is on the pair only: leadership without sharding is the HA mode.
    documents = helm_template(CHART / "ci" / "leadership-values.yaml")
    assert one(documents, "Deployment")["spec"]["replicas"] == 2


@pytest.mark.parametrize("interval", ["off", "0s", "90s"])
def test_log_summary_interval_is_accepted(interval: str, tmp_path: Path) -> None:
    documents = helm_template(sets=[f"settings.exporter.log_summary_interval={interval}"])
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(one(documents, "ConfigMap")["data"]["settings.toml"], "utf-8")
    loaded = load_settings(settings_file, {}).settings
    assert loaded.exporter.log_summary_interval == (90.0 if interval == "90s" else 0.0)


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (["replicaCount=two"], "replicaCount"),
        (["settings.clusters[0].name=null"], "name"),
        (["service.port=0"], "port"),
        (["settings.exporter.sharding.buckets=0"], "buckets"),
        (["settings.exporter.sharding.buckets=5000"], "buckets"),
        (["settings.exporter.sharding.session_timeout=soon"], "session_timeout"),
        (["settings.exporter.log_summary_interval=sometimes"], "log_summary_interval"),
        (["podMonitor.honorLabels=yes"], "honorLabels"),
    ],
    ids=[
        "replicas-not-int",
        "cluster-without-name",
        "port-out-of-range",
        "no-buckets",
        "too-many-buckets",
        "session-timeout-not-a-duration",
        "summary-interval-not-a-duration",
        "pod-monitor-honor-labels-not-bool",
    ],
)
def test_values_schema_rejects_invalid_values(sets: list[str], complaint: str) -> None:
    argv = [str(tools.tool_path("helm")), "template", RELEASE, str(CHART)]
    for item in sets:
        argv += ["--set", item]
    result = run_tool(argv)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr
