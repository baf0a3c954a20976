"""Start-up validation shared by ``run``, ``once`` and ``check`` (so they cannot disagree).

:func:`load` reads the settings file and, in the same pass, checks everything the process
would otherwise find out only once running: that every file it will open can be opened and
loads as what it should be (HTTP and OTLP certificate/key pairs, Kafka TLS files, the Kerberos
keytab, an OAuth token file, the kubeconfig), that the JSON-lines file can be written, and that
every cluster's ``consumer_properties`` make a working client. Every problem, the loader's own
included, is raised in one :class:`~klag_pipeline.errors.ConfigError` as ``dotted.path:
message`` naming the file. Nothing here touches the network.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from klag_pipeline.errors import ConfigError
from klag_pipeline.kafka.client_config import check_clusters
from klag_pipeline.settings.loader import LoadedSettings, load_settings
from klag_pipeline.settings.paths import tls_pair_failure, unreadable, unwritable
from klag_pipeline.settings.schema import HttpSettings, OtelSettings, Settings

Problem = Callable[[str, str], None]


def load(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> tuple[LoadedSettings, tuple[tuple[str, str], ...]]:
    """The settings at ``path``, validated for start-up, and the ignored consumer properties
    (dotted path, reason) to log once. Raises ConfigError listing every problem."""
    ignored: list[tuple[str, str]] = []

    def checks(settings: Settings, problem: Problem) -> None:
        ignored.extend(validate(settings, problem))

    loaded = load_settings(path, environ, checks=checks)
    return loaded, tuple(ignored)


def validate(settings: Settings, problem: Problem) -> tuple[tuple[str, str], ...]:
    """Report through ``problem(dotted_path, message)`` everything in ``settings`` that would
    fail at start-up; return the ignored consumer properties (dotted path, reason)."""
    ignored: tuple[tuple[str, str], ...] = ()
    try:
        ignored = check_clusters(settings.clusters)
    except ConfigError as exc:
        for where, message in exc.problems:
            problem(where, message)
    exporter = settings.exporter
    _http_tls(exporter.http, problem)
    if exporter.jsonl.enabled and exporter.jsonl.path != "-":
        reason = unwritable(exporter.jsonl.path, renames=exporter.jsonl.rotate_bytes > 0)
        if reason is not None:
            problem("exporter.jsonl.path", f"cannot write {exporter.jsonl.path}: {reason}")
    if exporter.otel.enabled:
        _otel(exporter.otel, problem)
    if exporter.leadership.enabled and exporter.leadership.provider == "kubernetes":
        _kubernetes(settings, problem)
    return ignored


def _readable(files: Sequence[tuple[str, str | None]], problem: Problem) -> bool:
    """Whether every configured file of ``files`` ((dotted path, file or None)) is readable."""
    usable = True
    for where, path in files:
        reason = unreadable(path) if path is not None else None
        if reason is not None:
            problem(where, f"cannot read {path}: {reason}")
            usable = False
    return usable


def _load_pair(cert: str, key: str | None) -> None:
    """Load a certificate/key pair as the servers and clients do; raises on failure."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # An empty password: an encrypted key fails here instead of prompting on the terminal.
    context.load_cert_chain(cert, key, password=lambda: b"")


def _http_tls(http: HttpSettings, problem: Problem) -> None:
    cert, key = http.tls_cert_file, http.tls_key_file
    if cert is None or key is None:
        return  # both or neither: the loader reports a lone one
    files = (("exporter.http.tls_cert_file", cert), ("exporter.http.tls_key_file", key))
    if not _readable(files, problem):
        return
    from klag_pipeline.http_auth import server_ssl_context

    try:
        server_ssl_context(http)
    except (OSError, ssl.SSLError, ValueError) as exc:
        # The HTTP server has no key-password setting: an encrypted key cannot be used.
        problem("exporter.http.tls_cert_file", tls_pair_failure(cert, key, exc, password=False))


def _otel(otel: OtelSettings, problem: Problem) -> None:
    from klag_pipeline.sinks.otlp.exporter import plaintext

    try:
        plaintext(otel)
    except ConfigError as exc:
        for where, message in exc.problems:
            problem(where, message)
    ca = otel.certificate_file
    cert, key = otel.client_certificate_file, otel.client_key_file
    files = (
        ("exporter.otel.certificate_file", ca),
        ("exporter.otel.client_certificate_file", cert),
        ("exporter.otel.client_key_file", key),
    )
    if not _readable(files, problem):
        return
    if ca is not None:
        try:
            ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem("exporter.otel.certificate_file", f"no CA certificate in {ca}: {exc}")
    if cert is not None and key is not None:
        try:
            _load_pair(cert, key)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem(
                "exporter.otel.client_certificate_file",
                tls_pair_failure(cert, key, exc, password=False),
            )


def _kubernetes(settings: Settings, problem: Problem) -> None:
    """What the Kubernetes lease provider does at start-up: find the API server (kubeconfig,
    service account or $KUBECONFIG) and load its TLS files. No request is made."""
    from klag_pipeline.leadership.kubernetes_api import discover

    leadership = settings.exporter.leadership
    where = "exporter.leadership.kubeconfig"
    if leadership.kubeconfig is not None:
        path = str(Path(leadership.kubeconfig).expanduser())
        if not _readable(((where, path),), problem):
            return
    # Certificates embedded as *-data are written to files for ssl; keep them only meanwhile.
    with tempfile.TemporaryDirectory(prefix="klag-check-") as scratch:
        try:
            api = discover(leadership, os.environ, materialize=Path(scratch))
        except ConfigError as exc:
            for found, message in exc.problems:
                problem(found, message)
            return
        try:
            api.ssl_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            problem(where, f"cannot load the API server TLS files: {exc}")
