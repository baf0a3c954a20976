"""The ``kubernetes`` leadership provider: a ``coordination.k8s.io/v1`` Lease over the API server.

The algorithm is client-go's ``leaderelection`` with a ``LeaseLock``:

* GET the Lease (create it when absent: 201 means we lead);
* another holder's lease counts as valid until ``leaseDurationSeconds`` after **we** last saw it
  change (our own monotonic clock, so clock skew between nodes cannot shorten it);
* a free, released or expired lease, or our own, is written back with PUT carrying the
  ``resourceVersion`` we read: the API server answers 409 Conflict when anyone wrote in between,
  so of two racing candidates exactly one wins;
* while leading, the renewal is tried first with the Lease object of the last round (one request
  instead of two); a 409 falls back to a fresh GET.

``release`` clears ``holderIdentity`` (and sets ``leaseDurationSeconds`` to 1), so a standby takes
over on its next round instead of waiting for the lease to expire.

Finding the API server and its credentials is :mod:`klag_pipeline.leadership.kubernetes_api`.
Plain aiohttp, no Kubernetes client library: three verbs on one resource do not justify the
official client's size and its synchronous core (kubernetes_asyncio is a generated mirror of it).
"""

from __future__ import annotations

import datetime
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from klag_pipeline.errors import ConfigError
from klag_pipeline.leadership.kubernetes_api import SERVICE_ACCOUNT_DIR, ApiServer, discover
from klag_pipeline.leadership.provider import LeadershipError, ProviderState
from klag_pipeline.settings.schema import LeadershipSettings

__all__ = ["KubernetesLeaseProvider", "micro_time"]

log = structlog.get_logger("klag_pipeline.leadership")

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def micro_time(wall: float) -> str:
    """A Kubernetes ``MicroTime``: RFC 3339 UTC with microseconds."""
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLeaseProvider(ProviderState):
    """Leadership through the Lease ``lease_name`` in ``lease_namespace``.

    ``monotonic`` / ``wall`` are injectable for tests; ``request_timeout`` bounds each HTTP
    request (default: half the renew deadline, since a round may need two requests).
    """

    kind = "kubernetes"

    def __init__(
        self,
        settings: LeadershipSettings,
        identity: str,
        *,
        api: ApiServer | None = None,
        env: Mapping[str, str] = os.environ,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        request_timeout: float | None = None,
    ) -> None:
        self._api = api or discover(settings, env, service_account_dir)
        try:
            self._ssl = self._api.ssl_context()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                [("exporter.leadership", f"cannot load the API server TLS files: {exc}")]
            ) from exc
        super().__init__(identity)
        self._name = settings.lease_name
        self._namespace = settings.lease_namespace or self._api.namespace or "default"
        self._duration = max(1, math.ceil(settings.lease_duration))
        self._timeout = request_timeout or settings.renew_deadline / 2
        self._monotonic = monotonic
        self._wall = wall
        self._session: aiohttp.ClientSession | None = None
        self._lease: dict[str, Any] | None = None
        self._observed_version: str | None = None
        self._observed_at = 0.0

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def url(self) -> str:
        """The Lease's URL."""
        return f"{self._api.url}{LEASES.format(namespace=self._namespace)}/{self._name}"

    async def acquire_or_renew(self) -> bool:
        self._leading = await self._round()
        return self._leading

    async def _round(self) -> bool:
        if self._leading and self._lease is not None:
            status, body = await self._write(self._claim(self._lease))
            if status == 200:
                return True
            # Someone wrote the Lease since our last renewal: look before deciding.
        status, body = await self._request("GET", self.url)
        if status == 404:
            status, body = await self._create()
            if status == 201:
                self._observe(body)
                return True
            if status == 409:  # created by another candidate a moment ago
                return False
            raise self._error("create", status, body)
        if status != 200:
            raise self._error("read", status, body)
        self._observe(body)
        spec = body.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        duration = _positive_int(spec.get("leaseDurationSeconds"), self._duration)
        if (
            holder is not None
            and holder != self._identity
            and self._monotonic() < self._observed_at + duration
        ):
            return False
        status, answer = await self._write(self._claim(body))
        if status == 200:
            return True
        if status == 409:
            self._lease = None
            return False
        raise self._error("update", status, answer)

    def _observe(self, lease: dict[str, Any]) -> None:
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version != self._observed_version:
            self._observed_version = version
            self._observed_at = self._monotonic()
        self._lease = lease
        self._holder = (lease.get("spec") or {}).get("holderIdentity") or None

    def _claim(self, lease: dict[str, Any]) -> dict[str, Any]:
        """``lease`` rewritten with us as holder (a takeover counts a transition)."""
        spec = dict(lease.get("spec") or {})
        now = micro_time(self._wall())
        if spec.get("holderIdentity") != self._identity:
            spec["acquireTime"] = now
            if spec.get("holderIdentity"):
                spec["leaseTransitions"] = _positive_int(spec.get("leaseTransitions"), 0) + 1
        spec["holderIdentity"] = self._identity
        spec["leaseDurationSeconds"] = self._duration
        spec["renewTime"] = now
        spec.setdefault("leaseTransitions", 0)
        return {**lease, "spec": spec}

    async def _create(self) -> tuple[int, dict[str, Any]]:
        now = micro_time(self._wall())
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self._identity,
                "leaseDurationSeconds": self._duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        return await self._request("POST", self.url.rsplit("/", 1)[0], lease)

    async def _write(self, lease: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        status, body = await self._request("PUT", self.url, lease)
        if status == 200:
            self._observe(body)
        elif status == 409:
            self._lease = None
        return status, body

    async def _request(
        self, method: str, url: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        headers = {"Accept": "application/json"}
        token = self._api.bearer_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.request(
                method, url, json=body, headers=headers, ssl=self._ssl or True
            ) as response:
                try:
                    answer = await response.json(content_type=None)
                except ValueError:
                    answer = {}
                return response.status, answer if isinstance(answer, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise LeadershipError(f"Kubernetes API {self._api.url}: {reason}") from exc

    def _error(self, what: str, status: int, body: Mapping[str, Any]) -> LeadershipError:
        message = str(body.get("message") or "")
        lease = f"Lease {self._namespace}/{self._name}"
        if status == 401:
            return LeadershipError(
                f"cannot {what} {lease}: 401 Unauthorized (bad or expired token)"
            )
        if status == 403:
            return LeadershipError(
                f"cannot {what} {lease}: 403 Forbidden: the service account needs get, create and "
                f"update on leases.coordination.k8s.io in namespace {self._namespace}"
            )
        return LeadershipError(f"cannot {what} {lease}: HTTP {status} {message}".rstrip())

    async def release(self) -> None:
        lease, leading = self._lease, self._leading
        self._leading = False
        if not leading or lease is None:
            return
        spec = dict(lease.get("spec") or {})
        now = micro_time(self._wall())
        spec.update(holderIdentity="", leaseDurationSeconds=1, acquireTime=now, renewTime=now)
        status, body = await self._request("PUT", self.url, {**lease, "spec": spec})
        if status == 409:
            return  # somebody else already wrote it: it is not ours to release
        if status != 200:
            raise self._error("release", status, body)
        self._observe(body)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _positive_int(value: object, default: int) -> int:
    return value if isinstance(value, int) and value >= 0 else default
