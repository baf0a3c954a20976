"""The ``kubernetes`` provider where a real API server cannot go: injected faults on the Lease API
emulator (an API server answering 503, one that is gone), and kubeconfig / in-cluster discovery.

Everything a real server can show (election, renewal, takeover, release, 409 on a stale
``resourceVersion``, racing candidates, 401, HTTPS with the kubeconfig's CA, electors taking over
after a crash and a clean shutdown) is tested against kube-apiserver + etcd in
test_kubernetes_real.py, and no longer here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from klag_pipeline.errors import ConfigError
from klag_pipeline.leadership import LeaderElector, LeadershipError
from klag_pipeline.leadership.kubernetes import KubernetesLeaseProvider
from klag_pipeline.leadership.kubernetes_api import (
    ApiServer,
    discover,
    in_cluster,
    load_kubeconfig,
)
from klag_pipeline.pipeline.clock import SystemClock
from klag_pipeline.settings.schema import LeadershipSettings
from tests.leadership.lease_emulator import LeaseEmulator

NS = "monitoring"
TOKEN = "test-token"


def lease_settings(**overrides: Any) -> LeadershipSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "provider": "kubernetes",
        "lease_name": "klag",
        "lease_namespace": NS,
        "lease_duration": 15.0,
        "renew_deadline": 10.0,
        "retry_period": 2.0,
    }
    values.update(overrides)
    return LeadershipSettings(**values)


@pytest.fixture
async def emulator() -> AsyncIterator[LeaseEmulator]:
    async with LeaseEmulator(tokens=(TOKEN, "token-a", "token-b", "token-c")) as running:
        yield running


def provider(
    emulator: LeaseEmulator,
    identity: str,
    *,
    token: str = TOKEN,
    **overrides: Any,
) -> KubernetesLeaseProvider:
    return KubernetesLeaseProvider(
        lease_settings(**overrides), identity, api=ApiServer(url=emulator.url, token=token)
    )


# -- injected faults ------------------------------------------------------------------------------


async def test_an_unavailable_api_server_is_an_error(emulator: LeaseEmulator) -> None:
    good = provider(emulator, "b")
    try:
        emulator.available = False
        with pytest.raises(LeadershipError, match="HTTP 503"):
            await good.acquire_or_renew()
    finally:
        await good.close()


async def test_an_unreachable_api_server_is_an_error() -> None:
    async with LeaseEmulator() as gone:
        url = gone.url
    unreachable = KubernetesLeaseProvider(
        lease_settings(), "a", api=ApiServer(url=url, token=TOKEN), request_timeout=2.0
    )
    try:
        with pytest.raises(LeadershipError, match="Kubernetes API"):
            await unreachable.acquire_or_renew()
    finally:
        await unreachable.close()


# -- configuration discovery ----------------------------------------------------------------------


def write_kubeconfig(
    path: Path,
    server: str,
    *,
    user: dict[str, Any],
    cluster_extra: dict[str, Any] | None = None,
) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "emu", "cluster": {"server": server, **(cluster_extra or {})}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [
            {"name": "other", "context": {"cluster": "missing", "user": "me"}},
            {
                "name": "test",
                "context": {"cluster": "emu", "user": "me", "namespace": "from-context"},
            },
        ],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_kubeconfig_current_context_is_resolved(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    config = write_kubeconfig(
        tmp_path / "config",
        "https://127.0.0.1:6443/",
        user={"tokenFile": "token", "client-certificate": "certs/me.crt"},
        cluster_extra={"certificate-authority": "/etc/ca.pem", "insecure-skip-tls-verify": True},
    )
    api = load_kubeconfig(config)
    assert api.url == "https://127.0.0.1:6443"
    assert api.namespace == "from-context"
    assert api.bearer_token() == "from-file"
    assert api.ca_file == Path("/etc/ca.pem")
    assert api.client_cert_file == tmp_path / "certs" / "me.crt"
    assert api.insecure_skip_tls_verify


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"exec": {"command": "aws"}}, "exec and auth-provider"),
        ({"auth-provider": {"name": "gcp"}}, "exec and auth-provider"),
    ],
)
def test_unsupported_kubeconfig_credentials_are_config_errors(
    tmp_path: Path, user: dict[str, Any], message: str
) -> None:
    config = write_kubeconfig(tmp_path / "config", "https://k:6443", user=user)
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(config)


def test_a_broken_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "config"
    broken.write_text("current-context: nowhere\ncontexts: []\n")
    with pytest.raises(ConfigError, match="no context named 'nowhere'"):
        load_kubeconfig(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_kubeconfig(tmp_path / "absent")


def test_in_cluster_configuration_comes_from_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("observability\n")
    (tmp_path / "ca.crt").write_text("not read here")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    api = in_cluster(env, tmp_path)
    assert api is not None
    assert api.url == "https://[fd00::1]:443"
    assert (api.namespace, api.bearer_token(), api.ca_file) == (
        "observability",
        "sa-token",
        tmp_path / "ca.crt",
    )
    assert in_cluster({}, tmp_path) is None
    assert discover(lease_settings(), env, tmp_path).url == api.url
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        discover(lease_settings(), {}, tmp_path)


# -- electors, in real time -----------------------------------------------------------------------

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.25}


@dataclass
class Candidate:
    name: str
    token: str
    elector: LeaderElector
    stop: asyncio.Event
    task: asyncio.Task[None]
    leading: bool = False


async def start_candidate(emulator: LeaseEmulator, name: str, token: str) -> Candidate:
    settings = lease_settings(**FAST)
    candidate_provider = KubernetesLeaseProvider(
        settings, name, api=ApiServer(url=emulator.url, token=token)
    )
    holder: list[Candidate] = []

    async def elected() -> None:
        holder[0].leading = True

    async def demoted() -> None:
        holder[0].leading = False

    elector = LeaderElector(
        candidate_provider,
        settings,
        clock=SystemClock(),
        on_elected=elected,
        on_demoted=demoted,
        release_timeout=1.0,
    )
    stop = asyncio.Event()
    candidate = Candidate(name, token, elector, stop, asyncio.create_task(elector.run(stop)))
    holder.append(candidate)
    return candidate


class SplitBrainWatch:
    """Samples every candidate's role every 20 ms; remembers the longest two-leader stretch."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        self.longest_overlap = 0.0
        self._since: float | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            leaders = sum(c.leading for c in self.candidates)
            now = time.monotonic()
            if leaders > 1:
                self._since = self._since or now
                self.longest_overlap = max(self.longest_overlap, now - self._since)
            else:
                self._since = None
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def wait_for(predicate: Any, within: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``within`` seconds."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > within:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - began


def leaders(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates if c.leading]


async def test_an_api_server_outage_steps_the_leader_down_within_the_renew_deadline(
    emulator: LeaseEmulator,
) -> None:
    candidates = [await start_candidate(emulator, name, f"token-{name}") for name in ("a", "b")]
    watch = SplitBrainWatch(candidates)
    try:
        await wait_for(lambda: len(leaders(candidates)) == 1, 5, "a first leader")
        emulator.available = False
        outage = time.monotonic()
        await wait_for(lambda: not leaders(candidates), 5, "step down")
        assert time.monotonic() - outage <= FAST["renew_deadline"] + FAST["retry_period"]
        emulator.available = True
        await wait_for(lambda: len(leaders(candidates)) == 1, 5, "one leader again")
    finally:
        await watch.close()
        for candidate in candidates:
            candidate.stop.set()
        await asyncio.gather(*(c.task for c in candidates), return_exceptions=True)
    assert watch.longest_overlap == 0.0
