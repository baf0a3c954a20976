"""The ``kubernetes`` provider against a real kube-apiserver with etcd (``kube_apiserver``).

The API contract the provider relies on (optimistic concurrency through ``resourceVersion``,
409 on a stale write, no unconditional update), then the provider round by round, racing
candidates, and electors in real time. Each test works in a namespace of its own. Which requests
were made and what the server answered comes from the server's audit log, not from the client.
The process-level kill -9 / SIGTERM scenario is in test_processes.py; the chart's RBAC in
tests/deploy/test_chart_apiserver.py; faults a real server cannot be made to show (5xx, hangs,
malformed bodies) stay on the emulator in test_kubernetes.py.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from klag_pipeline.leadership import LeaderElector, LeadershipError
from klag_pipeline.leadership.kubernetes import KubernetesLeaseProvider, micro_time
from klag_pipeline.pipeline.clock import SystemClock
from klag_pipeline.settings.schema import LeadershipSettings
from tests.support.kube_apiserver import CLIENT_USER, KubeApiServer, lease_requests
from tests.support.waiting import wait_until

LEASE = "klag"


@pytest.fixture
def namespace(kube_apiserver: KubeApiServer) -> str:
    name = f"lease-{secrets.token_hex(4)}"
    kube_apiserver.create_namespace(name)
    return name


def lease_settings(namespace: str, **overrides: Any) -> LeadershipSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "provider": "kubernetes",
        "lease_name": LEASE,
        "lease_namespace": namespace,
        "lease_duration": 15.0,
        "renew_deadline": 10.0,
        "retry_period": 2.0,
    }
    values.update(overrides)
    return LeadershipSettings(**values)


class ManualClock:
    """A monotonic clock the test moves by hand (the provider's view of lease expiry)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(
    server: KubeApiServer,
    namespace: str,
    identity: str,
    *,
    token: str | None = None,
    clock: ManualClock | None = None,
    **overrides: Any,
) -> KubernetesLeaseProvider:
    return KubernetesLeaseProvider(
        lease_settings(namespace, **overrides),
        identity,
        api=server.api(token),
        monotonic=clock or time.monotonic,
    )


def lease_body(namespace: str, holder: str, version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": LEASE, "namespace": namespace}
    if version is not None:
        metadata["resourceVersion"] = version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


async def audited(
    server: KubeApiServer,
    namespace: str,
    expected: Callable[[list[tuple[str, str | None, int]]], bool],
) -> list[tuple[str, str | None, int]]:
    """The providers' Lease requests in ``namespace`` (by the server's audit log) once they are
    what ``expected`` wants."""
    found: list[tuple[str, str | None, int]] = []

    def check() -> bool:
        found[:] = lease_requests(server.audit_events(user=CLIENT_USER, namespace=namespace))
        return expected(found)

    await wait_until(check, within=10, message="the audit log", details=lambda: repr(found))
    return found


# -- the API contract the provider relies on ----------------------------------------------------


async def test_the_api_server_rejects_a_stale_resource_version_with_409(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    server = kube_apiserver
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    status, body = server.call("GET", f"{leases}/{LEASE}")
    assert (status, body["reason"]) == (404, "NotFound")
    status, created = server.call("POST", leases, lease_body(namespace, "a"))
    assert status == 201, created
    first = created["metadata"]["resourceVersion"]
    status, body = server.call("POST", leases, lease_body(namespace, "b"))
    assert (status, body["reason"]) == (409, "AlreadyExists")

    # An update that changes nothing is no write: the resourceVersion stays (which is why every
    # renewal must change renewTime, or a standby would not see the holder alive).
    status, same = server.call("PUT", f"{leases}/{LEASE}", lease_body(namespace, "a", first))
    assert (status, same["metadata"]["resourceVersion"]) == (200, first)
    renewed = lease_body(namespace, "a", first)
    renewed["spec"]["renewTime"] = micro_time(time.time())
    status, updated = server.call("PUT", f"{leases}/{LEASE}", renewed)
    assert status == 200, updated
    second = updated["metadata"]["resourceVersion"]
    assert second != first
    # A writer that read the Lease before that update still holds the first version.
    status, body = server.call("PUT", f"{leases}/{LEASE}", lease_body(namespace, "b", first))
    assert (status, body["reason"], body["code"]) == (409, "Conflict", 409)
    assert server.holder(namespace, LEASE) == "a"
    # Leases do not allow unconditional updates: no resourceVersion is invalid, not a blind write.
    status, body = server.call("PUT", f"{leases}/{LEASE}", lease_body(namespace, "b"))
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert "resourceVersion" in body["message"]
    status, body = server.call("PUT", f"{leases}/{LEASE}", lease_body(namespace, "b", second))
    assert status == 200, body
    assert server.holder(namespace, LEASE) == "b"


async def test_the_api_server_validates_what_the_provider_writes(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    server = kube_apiserver
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    # Leases allow create-on-update: a PUT of an absent Lease creates it, whatever
    # resourceVersion it carries. The provider PUTs only a Lease it has read; should the Lease be
    # deleted in between, its PUT recreates it with it as holder, which is right for a free Lease.
    status, body = server.call("PUT", f"{leases}/{LEASE}", lease_body(namespace, "a", "1"))
    assert (status, body["spec"]["holderIdentity"]) == (201, "a")
    status, body = server.call("DELETE", f"{leases}/{LEASE}")
    assert status == 200, body
    bad = lease_body(namespace, "a")
    bad["spec"]["leaseDurationSeconds"] = 0
    status, body = server.call("POST", leases, bad)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "leaseDurationSeconds" in body["message"]
    other_ns = lease_body(namespace, "a")
    other_ns["metadata"]["namespace"] = "elsewhere"
    status, _ = server.call("POST", leases, other_ns)
    assert status == 400
    status, body = server.call("GET", f"{leases}/{LEASE}", token="wrong")
    assert (status, body["reason"], body["kind"]) == (401, "Unauthorized", "Status")


# -- the provider, one round at a time ----------------------------------------------------------


async def test_the_first_candidate_creates_the_lease_and_the_second_stands_by(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    a, b = provider(kube_apiserver, namespace, "a"), provider(kube_apiserver, namespace, "b")
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        assert b.holder == "a"
        created = kube_apiserver.lease(namespace, LEASE)
        assert created is not None
        assert await a.acquire_or_renew()
        lease = kube_apiserver.lease(namespace, LEASE)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "a"
        assert lease["spec"]["leaseDurationSeconds"] == 15
        assert lease["spec"]["leaseTransitions"] == 0
        assert lease["spec"]["renewTime"].endswith("Z")
        version = created["metadata"]["resourceVersion"]
        assert lease["metadata"]["resourceVersion"] != version, "a renewal is a write"
    finally:
        await a.close()
        await b.close()
    # create, then b's read, then a's renewal in one request (the Lease of its last round).
    requests = await audited(kube_apiserver, namespace, lambda r: len(r) >= 4)
    assert requests == [
        ("get", LEASE, 404),
        ("create", LEASE, 201),
        ("get", LEASE, 200),
        ("update", LEASE, 200),
    ]


async def test_a_standby_takes_over_only_after_the_lease_duration_it_observed(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    clock = ManualClock()
    a = provider(kube_apiserver, namespace, "a")
    b = provider(kube_apiserver, namespace, "b", clock=clock)
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()  # b first sees a's lease at 1000
        clock.now += 14.9
        assert not await b.acquire_or_renew()
        clock.now += 0.1
        assert await b.acquire_or_renew()
        lease = kube_apiserver.lease(namespace, LEASE)
        assert lease is not None
        assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("b", 1)
        # The old leader's next renewal carries a stale resourceVersion: the server answers 409
        # and a, after reading the Lease afresh, stands down.
        assert not await a.acquire_or_renew()
        assert a.holder == "b"
        assert kube_apiserver.holder(namespace, LEASE) == "b"
    finally:
        await a.close()
        await b.close()
    requests = await audited(kube_apiserver, namespace, lambda r: len(r) >= 8)
    assert requests == [
        ("get", LEASE, 404),  # a
        ("create", LEASE, 201),  # a
        ("get", LEASE, 200),  # b at 1000
        ("get", LEASE, 200),  # b at 1014.9
        ("get", LEASE, 200),  # b at 1015
        ("update", LEASE, 200),  # b takes over
        ("update", LEASE, 409),  # a renews with the Lease of its last round
        ("get", LEASE, 200),  # a looks again and stands by
    ]


async def test_a_renewal_by_the_holder_restarts_the_standbys_wait(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    clock = ManualClock()
    a = provider(kube_apiserver, namespace, "a")
    b = provider(kube_apiserver, namespace, "b", clock=clock)
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        clock.now += 10
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()  # a new resourceVersion: observed afresh at 1010
        clock.now += 14
        assert not await b.acquire_or_renew()
        assert kube_apiserver.holder(namespace, LEASE) == "a"
    finally:
        await a.close()
        await b.close()


async def test_release_frees_the_lease_for_an_immediate_takeover(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    a, b = provider(kube_apiserver, namespace, "a"), provider(kube_apiserver, namespace, "b")
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        await a.release()
        lease = kube_apiserver.lease(namespace, LEASE)
        assert lease is not None
        assert not lease["spec"].get("holderIdentity")
        assert lease["spec"]["leaseDurationSeconds"] == 1
        assert await b.acquire_or_renew()
        assert kube_apiserver.holder(namespace, LEASE) == "b"
    finally:
        await a.close()
        await b.close()


async def test_a_release_after_losing_the_lease_leaves_it_alone(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    clock = ManualClock()
    a = provider(kube_apiserver, namespace, "a")
    b = provider(kube_apiserver, namespace, "b", clock=clock)
    try:
        assert await a.acquire_or_renew()
        assert not await b.acquire_or_renew()
        clock.now += 15
        assert await b.acquire_or_renew()
        await a.release()  # a still believes it leads; its write is stale and must not land
        assert kube_apiserver.holder(namespace, LEASE) == "b"
    finally:
        await a.close()
        await b.close()
    requests = await audited(kube_apiserver, namespace, lambda r: len(r) >= 6)
    assert requests[-2:] == [("update", LEASE, 200), ("update", LEASE, 409)]
    assert len(requests) == 6


async def test_racing_candidates_elect_exactly_one(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    clock = ManualClock()
    names = [f"c{i}" for i in range(6)]
    candidates = [provider(kube_apiserver, namespace, n, clock=clock) for n in names]
    try:
        # All at once on an absent Lease: one create wins, the others get 409 AlreadyExists.
        won = await asyncio.gather(*(c.acquire_or_renew() for c in candidates))
        assert won.count(True) == 1, won
        first = names[won.index(True)]
        assert kube_apiserver.holder(namespace, LEASE) == first
        # The leader stops renewing; the rest see it expire and race to take it over, each
        # writing with the resourceVersion it read: one update lands; a loser either gets 409
        # or, when it reads after the winner wrote, sees a fresh holder and does not write.
        rest = [c for c, n in zip(candidates, names, strict=True) if n != first]
        assert not any(await asyncio.gather(*(c.acquire_or_renew() for c in rest)))
        clock.now += 16
        won = await asyncio.gather(*(c.acquire_or_renew() for c in rest))
        assert won.count(True) == 1, won
        second = next(c for c, w in zip(rest, won, strict=True) if w)
        assert kube_apiserver.holder(namespace, LEASE) == second.identity != first
        # The losers' next round reads the Lease afresh and leaves the winner in place.
        assert not any(
            await asyncio.gather(*(c.acquire_or_renew() for c in rest if c is not second))
        )
        assert all(c.holder == second.identity for c in rest)
        assert await second.acquire_or_renew()
    finally:
        await asyncio.gather(*(c.close() for c in candidates))
    # The winner's renewal is the last request; one create landed, any other was refused.
    requests = await audited(
        kube_apiserver, namespace, lambda r: r.count(("update", LEASE, 200)) >= 2
    )
    creates = [code for verb, _, code in requests if verb == "create"]
    assert creates.count(201) == 1, requests
    assert set(creates) <= {201, 409}, requests
    updates = [code for verb, _, code in requests if verb == "update"]
    # The takeover (200), the winner's renewal (200); every other write was refused with 409.
    assert updates.count(200) == 2, requests
    assert set(updates) <= {200, 409}, requests


async def test_a_bad_token_is_an_unauthorized_error(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    bad = provider(kube_apiserver, namespace, "a", token="expired")
    try:
        with pytest.raises(LeadershipError, match="401 Unauthorized"):
            await bad.acquire_or_renew()
    finally:
        await bad.close()


async def test_the_provider_speaks_https_with_the_kubeconfig_ca_data(
    kube_apiserver: KubeApiServer, namespace: str, tmp_path: Path
) -> None:
    config = kube_apiserver.write_kubeconfig(
        tmp_path / "kubeconfig", namespace=namespace, inline_ca=True
    )
    candidate = KubernetesLeaseProvider(
        LeadershipSettings(
            enabled=True, provider="kubernetes", lease_name=LEASE, kubeconfig=str(config)
        ),
        "a",
    )
    try:
        assert candidate.namespace == namespace
        assert await candidate.acquire_or_renew()
        assert kube_apiserver.holder(namespace, LEASE) == "a"
    finally:
        await candidate.close()


# -- electors, in real time ---------------------------------------------------------------------

FAST = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.25}


@dataclass
class Candidate:
    name: str
    elector: LeaderElector
    stop: asyncio.Event
    task: asyncio.Task[None]
    leading: bool = False


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def start_candidate(
    server: KubeApiServer, namespace: str, name: str, token: str
) -> Candidate:
    settings = lease_settings(namespace, **FAST)
    candidate_provider = KubernetesLeaseProvider(settings, name, api=server.api(token))
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
    candidate = Candidate(name, elector, stop, asyncio.create_task(elector.run(stop)))
    holder.append(candidate)
    return candidate


def leaders(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates if c.leading]


class SplitBrainWatch:
    """Samples every candidate's role every 20 ms; remembers the longest two-leader stretch."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        self.longest_overlap = 0.0
        self._since: float | None = None
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            if len(leaders(self.candidates)) > 1:
                self._since = self._since or now
                self.longest_overlap = max(self.longest_overlap, now - self._since)
            else:
                self._since = None
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_electors_take_over_after_a_crash_and_after_a_clean_shutdown(
    kube_apiserver: KubeApiServer, namespace: str
) -> None:
    """A crash, in process: the leader's service account is deleted (its token stops working,
    so not even the release on the way out reaches the server) and its task cancelled."""
    server = kube_apiserver
    tokens = {}
    for name in ("a", "b", "c"):
        server.create_service_account(namespace, name)
        tokens[name] = server.service_account_token(namespace, name)
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    status, body = server.call(
        "POST",
        f"{rbac}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "candidates"},
            "rules": [
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "create", "update"],
                }
            ],
        },
    )
    assert status == 201, body
    status, body = server.call(
        "POST",
        f"{rbac}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "candidates"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "candidates",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": n, "namespace": namespace} for n in tokens
            ],
        },
    )
    assert status == 201, body
    candidates = [await start_candidate(server, namespace, n, t) for n, t in tokens.items()]
    watch = SplitBrainWatch(candidates)
    try:
        await wait_until(lambda: len(leaders(candidates)) == 1, within=10, message="a first leader")
        crashed = next(c for c in candidates if c.leading)
        began = time.monotonic()
        status, body = server.call(
            "DELETE", f"/api/v1/namespaces/{namespace}/serviceaccounts/{crashed.name}"
        )
        assert status == 200, body
        # Wait until the token is refused, so that the release on the way out cannot land
        # either. That takes up to 10 s: the API server caches a successful token
        # authentication for 10 s (measured here: 9.9 s), and the leader renews meanwhile.
        await wait_until(
            lambda: server.call("GET", "/api", token=tokens[crashed.name])[0] == 401,
            within=30,
            interval=0.05,
            message="the crashed candidate's token refused",
        )
        revoked_after = time.monotonic() - began
        crashed.task.cancel()
        await asyncio.gather(crashed.task, return_exceptions=True)
        crashed.leading = False
        assert server.holder(namespace, LEASE) == crashed.name, "the crash released nothing"
        rest = [c for c in candidates if c is not crashed]
        await wait_until(
            lambda: len(leaders(rest)) == 1,
            within=10,
            interval=0.02,
            message="takeover after a crash",
        )
        took = time.monotonic() - began
        # b and c count the lease from when they saw its last renewal (at most one retry period
        # before the crash), so they must not take it over much earlier than its duration.
        assert took >= FAST["lease_duration"] - FAST["retry_period"] - 0.25, "took a valid lease"
        assert took <= revoked_after + FAST["lease_duration"] + FAST["retry_period"] + 1.0

        stopping = next(c for c in rest if c.leading)
        stopping.stop.set()
        await asyncio.wait_for(stopping.task, 5)
        last = next(c for c in rest if c is not stopping)
        began = time.monotonic()
        await wait_until(
            lambda: last.leading, within=10, interval=0.02, message="takeover after a release"
        )
        took = time.monotonic() - began
        assert took <= FAST["retry_period"] + 1.0, "a released lease is taken at once"
    finally:
        await watch.close()
        for candidate in candidates:
            candidate.stop.set()
        await asyncio.gather(*(c.task for c in candidates), return_exceptions=True)
    assert watch.longest_overlap <= FAST["renew_deadline"]
