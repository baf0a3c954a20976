"""The ``kubernetes`` provider against the Lease API emulator, and the emulator's own semantics."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devtools.kafka_local import generate_tls_files
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
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


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


class ManualClock:
    """A monotonic clock the test moves by hand (the provider's view of lease expiry)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(
    emulator: LeaseEmulator,
    identity: str,
    *,
    token: str = TOKEN,
    clock: ManualClock | None = None,
    **overrides: Any,
) -> KubernetesLeaseProvider:
    return KubernetesLeaseProvider(
        lease_settings(**overrides),
        identity,
        api=ApiServer(url=emulator.url, token=token),
        monotonic=clock or time.monotonic,
    )


async def call(
    emulator: LeaseEmulator, method: str, path: str, body: Any = None, token: str | None = TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, emulator.url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


def lease_body(holder: str, version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "klag", "namespace": NS}
    if version is not None:
        metadata["resourceVersion"] = version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


# -- the emulator ---------------------------------------------------------------------------------


async def test_the_emulator_rejects_a_missing_or_wrong_bearer_token(
    emulator: LeaseEmulator,
) -> None:
    for token in (None, "wrong"):
        status, body = await call(emulator, "GET", f"{LEASES}/klag", token=token)
        assert (status, body["reason"], body["kind"]) == (401, "Unauthorized", "Status")


async def test_the_emulator_rejects_a_stale_resource_version_with_409(
    emulator: LeaseEmulator,
) -> None:
    status, body = await call(emulator, "GET", f"{LEASES}/klag")
    assert (status, body["reason"]) == (404, "NotFound")
    status, created = await call(emulator, "POST", LEASES, lease_body("a"))
    assert status == 201
    first = created["metadata"]["resourceVersion"]
    status, body = await call(emulator, "POST", LEASES, lease_body("b"))
    assert (status, body["reason"]) == (409, "AlreadyExists")

    status, updated = await call(emulator, "PUT", f"{LEASES}/klag", lease_body("a", first))
    assert status == 200
    second = updated["metadata"]["resourceVersion"]
    assert second != first
    # A writer that read the Lease before that update still holds the first version.
    status, body = await call(emulator, "PUT", f"{LEASES}/klag", lease_body("b", first))
    assert (status, body["reason"], body["code"]) == (409, "Conflict", 409)
    assert emulator.holder(NS, "klag") == "a"
    status, body = await call(emulator, "PUT", f"{LEASES}/klag", lease_body("b"))
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = await call(emulator, "PUT", f"{LEASES}/klag", lease_body("b", second))
    assert status == 200
    assert emulator.holder(NS, "klag") == "b"


async def test_the_emulator_validates_like_the_api_server(emulator: LeaseEmulator) -> None:
    status, _ = await call(emulator, "PUT", f"{LEASES}/klag", lease_body("a", "1"))
    assert status == 404, "Leases are not created by PUT"
    status, body = await call(emulator, "POST", LEASES, lease_body("a", "5"))
    assert status == 500
    assert "resourceVersion" in body["message"]
    bad = lease_body("a")
    bad["spec"]["leaseDurationSeconds"] = 0
    status, body = await call(emulator, "POST", LEASES, bad)
    assert (status, body["reason"]) == (422, "Invalid")
    other_ns = lease_body("a")
    other_ns["metadata"]["namespace"] = "elsewhere"
    status, _ = await call(emulator, "POST", LEASES, other_ns)
    assert status == 400
    status, _ = await call(emulator, "DELETE", f"{LEASES}/klag")
    assert status == 405


# -- the provider, one round at a time --------------------------------------------------------


async def test_the_first_candidate_creates_the_lease_and_the_second_stands_by(
    emulator: LeaseEmulator,
) -> None:
    a, b = provider(emulator, "a"), provider(emulator, "b")
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        assert b.holder == "a"
        assert await a.acquire_or_renew()
        lease = emulator.leases[(NS, "klag")]
        assert lease["spec"]["holderIdentity"] == "a"
        assert lease["spec"]["leaseDurationSeconds"] == 15
        assert lease["spec"]["renewTime"].endswith("Z")
    finally:
        await a.close()
        await b.close()


async def test_a_standby_takes_over_only_after_the_lease_duration_it_observed(
    emulator: LeaseEmulator,
) -> None:
    clock = ManualClock()
    a, b = provider(emulator, "a"), provider(emulator, "b", clock=clock)
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()  # b first sees a's lease at 1000
        clock.now += 14.9
        assert not await b.acquire_or_renew()
        clock.now += 0.1
        assert await b.acquire_or_renew()
        spec = emulator.leases[(NS, "klag")]["spec"]
        assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
        # The old leader's next renewal fails on the stale resourceVersion and it stands down.
        assert not await a.acquire_or_renew()
        assert a.holder == "b"
        assert ("PUT", f"{LEASES}/klag", 409) in emulator.requests
    finally:
        await a.close()
        await b.close()


async def test_a_renewal_by_the_holder_restarts_the_standbys_wait(emulator: LeaseEmulator) -> None:
    clock = ManualClock()
    a, b = provider(emulator, "a"), provider(emulator, "b", clock=clock)
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        clock.now += 10
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()  # a new resourceVersion: observed afresh at 1010
        clock.now += 14
        assert not await b.acquire_or_renew()
    finally:
        await a.close()
        await b.close()


async def test_release_frees_the_lease_for_an_immediate_takeover(emulator: LeaseEmulator) -> None:
    a, b = provider(emulator, "a"), provider(emulator, "b")
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        await a.release()
        assert emulator.holder(NS, "klag") is None
        assert await b.acquire_or_renew()
    finally:
        await a.close()
        await b.close()


async def test_a_bad_token_and_an_unavailable_api_server_are_errors(
    emulator: LeaseEmulator,
) -> None:
    bad = provider(emulator, "a", token="expired")
    good = provider(emulator, "b")
    try:
        with pytest.raises(LeadershipError, match="401 Unauthorized"):
            await bad.acquire_or_renew()
        emulator.available = False
        with pytest.raises(LeadershipError, match="HTTP 503"):
            await good.acquire_or_renew()
    finally:
        await bad.close()
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


async def test_the_provider_speaks_https_with_the_kubeconfig_ca(tmp_path: Path) -> None:
    tls = generate_tls_files(tmp_path / "tls")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_keystore)
    async with LeaseEmulator(tokens=("secret",), tls=server) as secure:
        config = write_kubeconfig(
            tmp_path / "kubeconfig",
            secure.url,
            user={"token": "secret"},
            cluster_extra={
                "certificate-authority-data": base64.b64encode(tls.ca_cert.read_bytes()).decode()
            },
        )
        candidate = KubernetesLeaseProvider(
            lease_settings(lease_namespace=None, kubeconfig=str(config)), "a"
        )
        try:
            assert candidate.namespace == "from-context"
            assert await candidate.acquire_or_renew()
            assert secure.holder("from-context", "klag") == "a"
        finally:
            await candidate.close()


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


async def test_electors_take_over_after_a_crash_and_after_a_clean_shutdown(
    emulator: LeaseEmulator,
) -> None:
    candidates = [
        await start_candidate(emulator, name, f"token-{name}") for name in ("a", "b", "c")
    ]
    watch = SplitBrainWatch(candidates)
    try:
        await wait_for(lambda: len(leaders(candidates)) == 1, 5, "a first leader")
        # Stable: for several renewals nobody else leads.
        await asyncio.sleep(1.0)
        assert len(leaders(candidates)) == 1

        crashed = next(c for c in candidates if c.leading)
        # A crash: the process vanishes without a word (its credentials stop working, so not
        # even the release on the way out reaches the API server).
        emulator.tokens.discard(crashed.token)
        crashed.task.cancel()
        await asyncio.gather(crashed.task, return_exceptions=True)
        crashed.leading = False
        rest = [c for c in candidates if c is not crashed]
        took = await wait_for(lambda: len(leaders(rest)) == 1, 5, "takeover after a crash")
        assert took <= FAST["lease_duration"] + FAST["retry_period"] + 0.5

        stopping = next(c for c in rest if c.leading)
        stopping.stop.set()
        await asyncio.wait_for(stopping.task, 5)
        last = next(c for c in rest if c is not stopping)
        took = await wait_for(lambda: last.leading, 5, "takeover after a release")
        assert took <= FAST["retry_period"] + 0.5, "a released lease is taken at once"
    finally:
        await watch.close()
        for candidate in candidates:
            candidate.stop.set()
        await asyncio.gather(*(c.task for c in candidates), return_exceptions=True)
    assert watch.longest_overlap <= FAST["renew_deadline"]


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
