"""A real kube-apiserver backed by a real etcd, on loopback, for the Lease and Helm chart tests.

The binaries come from ``make tools`` (:mod:`devtools.kube`). :meth:`KubeApiServer.start` runs

* etcd with a fresh data directory (``--unsafe-no-fsync``: a throwaway store), client and peer
  URLs on free loopback ports;
* kube-apiserver on a free loopback port with a serving certificate from a throwaway CA,
  static bearer tokens (``admin`` in ``system:masters``), RBAC authorization, service-account
  tokens signed with a fresh RSA key (so the TokenRequest API works), and an audit log of every
  Lease request and every request by a service account (what the RBAC tests read to learn the
  verbs the provider really uses).

Every wait has a deadline; both processes die with the test process (PDEATHSIG) and are stopped
by :meth:`KubeApiServer.stop` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools import kube
from devtools.kafka_local import _die_with_parent, generate_tls_files
from klag_pipeline.leadership.kubernetes_api import ApiServer

START_TIMEOUT = 180.0
"""etcd and the API server on a busy two-core machine: the API server alone needs 10-40 s."""
STOP_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
CLIENT_USER = "lease-client"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
        },
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class KubeStartError(RuntimeError):
    """etcd or the API server did not come up."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class KubeApiServer:
    """A running etcd + kube-apiserver pair. Use :meth:`start`; :meth:`stop` when done."""

    root: Path
    url: str = ""
    ca_file: Path = field(default_factory=Path)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    client_token: str = field(default_factory=lambda: secrets.token_hex(16))
    """User ``lease-client`` (also in system:masters): the providers' default, so that the audit
    log tells their requests from the test's own (``admin``)."""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_in: float = 0.0

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path) -> KubeApiServer:
        server = cls(root)
        began = time.monotonic()
        try:
            server._start_etcd()
            server._start_apiserver()
        except BaseException:
            server.stop()
            raise
        server.started_in = time.monotonic() - began
        return server

    def _spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        finally:
            log.close()
        self.processes[name] = process
        return process

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        process = self._spawn(
            "etcd",
            [
                str(kube.binary("etcd")),
                "--name=klag-test",
                f"--data-dir={self.root / 'etcd-data'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=klag-test=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as answer:
                    return bool(json.load(answer).get("health") == "true")
            except (OSError, ValueError):
                return False

        self._wait("etcd", process, healthy)

    def _start_apiserver(self) -> None:
        tls = generate_tls_files(self.root / "tls")
        self.ca_file = tls.ca_cert
        tokens = self.root / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f'{self.client_token},{CLIENT_USER},client-uid,"system:masters"\n'
        )
        tokens.chmod(0o600)
        signing_key = self.root / "service-account.key"
        signing_key.write_bytes(_rsa_key_pem())
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        process = self._spawn(
            "kube-apiserver",
            [
                str(kube.binary("kube-apiserver")),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={tls.server_keystore}",
                f"--tls-private-key-file={tls.server_keystore}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={signing_key}",
                f"--service-account-signing-key-file={signing_key}",
                "--service-cluster-ip-range=10.96.0.0/24",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--profiling=false",
                # A loopback advertise address is refused by the endpoint reconciler (it would
                # publish it as the kubernetes Service's endpoint); there are no pods to use it.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.root / 'certs'}",
            ],
        )

        def ready() -> bool:
            try:
                status, _ = self.call("GET", "/readyz")
            except OSError:
                return False
            return status == 200

        self._wait("kube-apiserver", process, ready)

    def _wait(self, name: str, process: subprocess.Popen[bytes], ready: Any) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None:
                raise KubeStartError(f"{name} exited with {process.returncode}\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise KubeStartError(
                    f"{name} not ready within {START_TIMEOUT:g}s\n{self.tail(name)}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the API server, then etcd; SIGKILL what is still there after a while."""
        for name in ("kube-apiserver", "etcd"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def tail(self, name: str, lines: int = 30) -> str:
        log = self.root / f"{name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return f"--- {name} log\n" + "\n".join(text.splitlines()[-lines:])

    # -- clients ------------------------------------------------------------------------------

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    def api(self, token: str | None = None) -> ApiServer:
        """How the provider reaches this server, as ``token`` (default: ``lease-client``)."""
        return ApiServer(url=self.url, token=token or self.client_token, ca_file=self.ca_file)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request (``token`` default: the admin's); (status, JSON body or {})."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(
                request, timeout=REQUEST_TIMEOUT, context=self.ssl_context()
            ) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {}
        return status, parsed if isinstance(parsed, dict) else {}

    def create_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        status, answer = self.call("POST", "/api/v1/namespaces", body)
        assert status == 201, answer

    def create_service_account(self, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}
        status, answer = self.call("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body)
        assert status == 201, answer

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A token for ``namespace/name`` minted by the TokenRequest API."""
        status, answer = self.call(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        assert status == 201, answer
        token: str = answer["status"]["token"]
        return token

    def lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, answer = self.call(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        )
        if status == 404:
            return None
        assert status == 200, answer
        return answer

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.lease(namespace, name)
        return None if lease is None else (lease["spec"].get("holderIdentity") or None)

    def write_kubeconfig(
        self,
        path: Path,
        *,
        token: str | None = None,
        namespace: str | None = None,
        inline_ca: bool = False,
    ) -> Path:
        """A kubeconfig for this server; ``inline_ca``: ``certificate-authority-data``."""
        context: dict[str, Any] = {"cluster": "real", "user": "user"}
        if namespace:
            context["namespace"] = namespace
        cluster: dict[str, Any] = {"server": self.url}
        if inline_ca:
            cluster["certificate-authority-data"] = base64.b64encode(
                self.ca_file.read_bytes()
            ).decode()
        else:
            cluster["certificate-authority"] = str(self.ca_file)
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "real",
            "clusters": [{"name": "real", "cluster": cluster}],
            "users": [{"name": "user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "real", "context": context}],
        }
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def kubectl(
        self, *args: str, stdin: str | None = None, token: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """The built kubectl against this server (admin unless ``token``); never raises on exit."""
        config = self.root / f"kubeconfig-{secrets.token_hex(4)}"
        self.write_kubeconfig(config, token=token)
        try:
            return subprocess.run(
                [
                    str(kube.binary("kubectl")),
                    f"--kubeconfig={config}",
                    # Its discovery cache here, not in ~/.kube (a new port every session).
                    f"--cache-dir={self.root / 'kubectl-cache'}",
                    *args,
                ],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env={**os.environ, "KUBECTL_INTERACTIVE_DELETE": "false"},
            )
        finally:
            config.unlink(missing_ok=True)

    def audit_events(
        self, *, user: str | None = None, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Audit events so far (ResponseComplete stage), of ``user`` / in ``namespace`` if given."""
        if not self.audit_log.exists():
            return []
        found = []
        for line in self.audit_log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            if event.get("stage") != "ResponseComplete":
                continue
            if user is not None and event.get("user", {}).get("username") != user:
                continue
            if namespace is not None and event.get("objectRef", {}).get("namespace") != namespace:
                continue
            found.append(event)
        return found


def lease_requests(events: Iterable[dict[str, Any]]) -> list[tuple[str, str | None, int]]:
    """(verb, Lease name or None, response code) of each Lease request among ``events``."""
    return [
        (e["verb"], e["objectRef"].get("name"), e.get("responseStatus", {}).get("code", 0))
        for e in events
        if e.get("objectRef", {}).get("resource") == "leases"
    ]


def _rsa_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
