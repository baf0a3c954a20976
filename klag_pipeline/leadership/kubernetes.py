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

Plain aiohttp, no Kubernetes client library: three verbs on one resource do not justify the
official client's size and its synchronous core (kubernetes_asyncio is a generated mirror of it).
"""

from __future__ import annotations

import datetime
import math
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from klag_pipeline.errors import ConfigError
from klag_pipeline.leadership import LeadershipError
from klag_pipeline.settings.schema import LeadershipSettings

log = structlog.get_logger("klag_pipeline.leadership")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


@dataclass(frozen=True, slots=True)
class ApiServer:
    """Where the API server is and how to authenticate to it.

    ``token_file`` is read again for every request: projected service-account tokens rotate.
    """

    url: str
    namespace: str | None = None
    token: str | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    insecure_skip_tls_verify: bool = False

    def bearer_token(self) -> str | None:
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError as exc:
                raise LeadershipError(
                    f"cannot read the token file {self.token_file}: {exc}"
                ) from exc
        return self.token

    def ssl_context(self) -> ssl.SSLContext | None:
        """None for a plain ``http://`` server (only sensible on loopback, e.g. in tests)."""
        if not self.url.startswith("https://"):
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.insecure_skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert_file is not None:
            context.load_cert_chain(
                str(self.client_cert_file),
                str(self.client_key_file) if self.client_key_file is not None else None,
            )
        return context


def in_cluster(env: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR) -> ApiServer | None:
    """The API server as seen from a pod (service environment + service account files)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    if ":" in host:
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    ca_file = directory / "ca.crt"
    return ApiServer(
        url=f"https://{host}:{port}",
        namespace=namespace_file.read_text().strip() if namespace_file.is_file() else None,
        token_file=directory / "token",
        ca_file=ca_file if ca_file.is_file() else None,
    )


def load_kubeconfig(path: Path, materialize: Path | None = None) -> ApiServer:
    """The current context of a kubeconfig file.

    Supported: ``server``, ``certificate-authority(-data)``, ``insecure-skip-tls-verify``,
    ``token``, ``tokenFile``, ``client-certificate(-data)``, ``client-key(-data)`` and the
    context's ``namespace``. Exec plugins and auth providers are not. ``*-data`` values are
    written to files under ``materialize`` (a fresh temporary directory by default) because
    :mod:`ssl` loads certificates from files only. Raises :class:`ConfigError`.
    """
    import base64
    import binascii

    import yaml

    key = "exporter.leadership.kubeconfig"
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([(key, f"cannot read {path}: {exc}")]) from exc
    if not isinstance(document, dict):
        raise ConfigError([(key, f"{path} is not a kubeconfig (no mapping at the top)")])

    def named(section: str, name: object) -> dict[str, Any]:
        for entry in document.get(section) or ():
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(section.rstrip("s"))
                return body if isinstance(body, dict) else {}
        raise ConfigError([(key, f"{path}: no {section.rstrip('s')} named {name!r}")])

    current = document.get("current-context")
    if not current:
        raise ConfigError([(key, f"{path}: current-context is not set")])
    context = named("contexts", current)
    cluster = named("clusters", context.get("cluster"))
    user = named("users", context.get("user")) if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise ConfigError(
            [(key, f"{path}: exec and auth-provider credentials are not supported; use a token")]
        )
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise ConfigError([(key, f"{path}: cluster {context.get('cluster')!r} has no server URL")])
    base = path.parent
    scratch: list[Path] = []

    def file_of(field: str, source: dict[str, Any]) -> Path | None:
        data = source.get(f"{field}-data")
        if data:
            try:
                raw = base64.b64decode(str(data), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ConfigError([(key, f"{path}: {field}-data is not base64")]) from exc
            if not scratch:
                scratch.append(materialize or Path(tempfile.mkdtemp(prefix="klag-kubeconfig-")))
            target = scratch[0] / field
            target.write_bytes(raw)
            target.chmod(0o600)
            return target
        value = source.get(field)
        return None if not value else base / str(value)

    token_file = user.get("tokenFile")
    return ApiServer(
        url=server.rstrip("/"),
        namespace=context.get("namespace") or None,
        token=str(user["token"]) if user.get("token") else None,
        token_file=base / str(token_file) if token_file else None,
        ca_file=file_of("certificate-authority", cluster),
        client_cert_file=file_of("client-certificate", user),
        client_key_file=file_of("client-key", user),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


def discover(
    settings: LeadershipSettings,
    env: Mapping[str, str] = os.environ,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    materialize: Path | None = None,
) -> ApiServer:
    """``kubeconfig`` when configured, else the in-cluster service account, else $KUBECONFIG.

    ``materialize``: where ``*-data`` certificates are written (see :func:`load_kubeconfig`)."""
    if settings.kubeconfig:
        return load_kubeconfig(Path(settings.kubeconfig).expanduser(), materialize)
    found = in_cluster(env, service_account_dir)
    if found is not None:
        return found
    configured = env.get("KUBECONFIG", "").split(os.pathsep)[0]
    if configured:
        return load_kubeconfig(Path(configured).expanduser(), materialize)
    raise ConfigError(
        [
            (
                "exporter.leadership.kubeconfig",
                "not running in a pod (KUBERNETES_SERVICE_HOST is unset): set kubeconfig",
            )
        ]
    )


def micro_time(wall: float) -> str:
    """A Kubernetes ``MicroTime``: RFC 3339 UTC with microseconds."""
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubernetesLeaseProvider:
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
        self._identity = identity
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
        self._leading = False
        self._holder: str | None = None

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def holder(self) -> str | None:
        return self._holder

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
