"""The Helm chart against a real kube-apiserver (``kube_apiserver``): every values variant is
accepted by a server-side dry run, and the chart's RBAC is sufficient and minimal for the
Lease provider, proven with a service-account token minted by the TokenRequest API.

Not checked here: the ServiceMonitor and PrometheusRule objects (monitoring-values). Their CRDs
belong to the Prometheus Operator, which a bare API server does not have and which cannot be
obtained offline here as manifests; those two kinds are left out of the dry run (the test says
which it left out) and stay covered by test_helm.py (promtool, the Service they select).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import tools
from klag_pipeline.leadership import LeadershipError
from klag_pipeline.leadership.kubernetes import KubernetesLeaseProvider
from klag_pipeline.settings.schema import LeadershipSettings
from tests.deploy.test_helm import (
    CHART,
    CI_VALUES,
    CRD_KINDS,
    RELEASE,
    VALUE_IDS,
    VALUE_SETS,
    run_tool,
)
from tests.support.kube_apiserver import KubeApiServer, lease_requests
from tests.support.waiting import wait_until

LEADERSHIP_VALUES = CHART / "ci" / "leadership-values.yaml"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding")


def render(namespace: str, values_file: Path | None) -> list[dict[str, Any]]:
    argv = [str(tools.tool_path("helm")), "template", RELEASE, str(CHART), "--namespace", namespace]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    result = run_tool(argv)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def as_stream(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


@pytest.fixture
def namespace(kube_apiserver: KubeApiServer) -> str:
    name = f"chart-{secrets.token_hex(4)}"
    kube_apiserver.create_namespace(name)
    return name


def test_every_values_variant_is_under_test() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "leadership-values",
        "monitoring-values",
        "secrets-values",
    }


@pytest.mark.parametrize("values_file", VALUE_SETS, ids=VALUE_IDS)
def test_the_rendered_chart_passes_a_server_side_dry_run(
    kube_apiserver: KubeApiServer, namespace: str, values_file: Path | None
) -> None:
    documents = render(namespace, values_file)
    checked = [d for d in documents if d["kind"] not in CRD_KINDS]
    left_out = sorted(d["kind"] for d in documents if d["kind"] in CRD_KINDS)
    if values_file is not None and values_file.stem == "monitoring-values":
        assert left_out == sorted(CRD_KINDS), "the variant that renders the CRD kinds"
    else:
        assert left_out == []
    result = kube_apiserver.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=helm-test",
        "--namespace",
        namespace,
        "-f",
        "-",
        stdin=as_stream(checked),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    applied = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(applied) == len(checked), result.stdout
    assert all(line.endswith("serverside-applied (server dry run)") for line in applied), (
        result.stdout
    )
    # Nothing was created: it was a dry run.
    status, body = kube_apiserver.call("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    assert (status, body["items"]) == (200, [])


def test_a_broken_manifest_is_refused_by_the_dry_run(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    """The dry run can fail: an unknown field in the Deployment is rejected (strict validation)."""
    documents = render(namespace, None)
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    result = kube_apiserver.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--namespace",
        namespace,
        "-f",
        "-",
        stdin=as_stream([deployment]),
    )
    assert result.returncode != 0
    assert "imagePullPolicyy" in result.stderr


# -- RBAC -----------------------------------------------------------------------------------------


def apply_rbac(server: KubeApiServer, namespace: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Apply the chart's ServiceAccount, Role and RoleBinding for real.

    Returns the account's name, the Role and the leadership settings of the values file."""
    documents = render(namespace, LEADERSHIP_VALUES)
    rbac = [d for d in documents if d["kind"] in RBAC_KINDS]
    assert sorted(d["kind"] for d in rbac) == sorted(RBAC_KINDS)
    result = server.kubectl(
        "apply",
        "--server-side",
        "--field-manager=helm-test",
        "--namespace",
        namespace,
        "-f",
        "-",
        stdin=as_stream(rbac),
    )
    assert result.returncode == 0, result.stderr
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    role = next(d for d in rbac if d["kind"] == "Role")
    settings = yaml.safe_load(LEADERSHIP_VALUES.read_text())["settings"]["exporter"]["leadership"]
    return account, role, settings


def lease_provider(
    server: KubeApiServer, namespace: str, token: str, lease_name: str, identity: str = "pod-0"
) -> KubernetesLeaseProvider:
    settings = LeadershipSettings(
        enabled=True, provider="kubernetes", lease_name=lease_name, lease_namespace=namespace
    )
    return KubernetesLeaseProvider(settings, identity, api=server.api(token))


async def test_the_charts_service_account_can_elect_and_nothing_more(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    server = kube_apiserver
    account, role, settings = apply_rbac(server, namespace)
    lease_name = settings["lease_name"]
    token = server.service_account_token(namespace, account)

    # Sufficient: the whole life of a lease (create, renew, lose to a takeover, read, release).
    first = lease_provider(server, namespace, token, lease_name, "pod-0")
    second = lease_provider(server, namespace, token, lease_name, "pod-1")
    try:
        assert await first.acquire_or_renew()
        assert await first.acquire_or_renew()
        assert not await second.acquire_or_renew()
        await first.release()
        assert await second.acquire_or_renew()
        assert not await first.acquire_or_renew()
        assert server.holder(namespace, lease_name) == "pod-1"
    finally:
        await first.close()
        await second.close()

    # Minimal: the Role grants exactly the verbs the provider was seen to use (the audit log of
    # the service account's requests), and names the Lease wherever the API allows it (a create
    # cannot be restricted by name: the name is not in its URL).
    user = f"system:serviceaccount:{namespace}:{account}"
    used: set[tuple[str, str | None]] = set()

    def all_seen() -> bool:
        used.update(
            (verb, name) for verb, name, _ in lease_requests(server.audit_events(user=user))
        )
        return {verb for verb, _ in used} >= {"get", "create", "update"}

    await wait_until(all_seen, within=10, message="the audit log", details=lambda: repr(used))
    # (The audit log names the Lease of a create too: it takes the name from the body.)
    assert used == {("create", lease_name), ("get", lease_name), ("update", lease_name)}
    assert sorted(role["rules"], key=lambda rule: rule["verbs"]) == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name],
            "verbs": ["get", "update"],
        },
    ]
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {v for v, _ in used}

    # And what the server says the account may do, beyond what every authenticated account may.
    baseline = f"baseline-{secrets.token_hex(3)}"
    server.create_service_account(namespace, baseline)

    def can_i(as_token: str) -> set[str]:
        result = server.kubectl("auth", "can-i", "--list", "--namespace", namespace, token=as_token)
        assert result.returncode == 0, result.stderr
        return {" ".join(line.split()) for line in result.stdout.splitlines()[1:]}

    extra = can_i(token) - can_i(server.service_account_token(namespace, baseline))
    assert extra == {
        "leases.coordination.k8s.io [] [] [create]",
        f"leases.coordination.k8s.io [] [{lease_name}] [get update]",
    }


async def test_without_the_role_binding_the_provider_is_denied_with_a_clear_error(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    server = kube_apiserver
    account, _, settings = apply_rbac(server, namespace)
    unbound = f"unbound-{secrets.token_hex(3)}"
    server.create_service_account(namespace, unbound)
    candidates = [
        # A service account the chart did not bind.
        lease_provider(
            server,
            namespace,
            server.service_account_token(namespace, unbound),
            settings["lease_name"],
        ),
        # The chart's account, but another Lease than the one its Role names.
        lease_provider(
            server, namespace, server.service_account_token(namespace, account), "other-lease"
        ),
    ]
    try:
        for candidate in candidates:
            with pytest.raises(LeadershipError) as denied:
                await candidate.acquire_or_renew()
            assert str(denied.value) == (
                f"cannot read Lease {namespace}/{candidate.url.rsplit('/', 1)[1]}: 403 Forbidden: "
                "the service account needs get, create and update on leases.coordination.k8s.io "
                f"in namespace {namespace}"
            )
    finally:
        await asyncio.gather(*(c.close() for c in candidates))
    assert server.lease(namespace, settings["lease_name"]) is None
    assert server.lease(namespace, "other-lease") is None
