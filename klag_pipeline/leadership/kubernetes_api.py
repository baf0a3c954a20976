"""Where the Kubernetes API server is and how to authenticate to it, for the Lease provider.

In a pod: the service account (environment + mounted token and CA); elsewhere a kubeconfig file
(``kubeconfig`` setting or ``$KUBECONFIG``). Also used by start-up checks, which must find the
server without making a request.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klag_pipeline.errors import ConfigError
from klag_pipeline.leadership.provider import LeadershipError
from klag_pipeline.settings.schema import LeadershipSettings

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
