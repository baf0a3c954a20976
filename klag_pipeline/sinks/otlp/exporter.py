"""The OTLP exporter of the sink: built from :class:`OtelSettings`, observed for failures.

The SDK's exporters retry on their own (bounded by ``timeout``) and log every failed attempt and
every failed interval through stdlib logging. The sink wraps the exporter instead: while one of
its exports runs, the exporters' log records are diverted into that export's error list, and
:class:`ExportHealth` logs once when exports start failing and once when they recover, counting
every failure in between. Header values (auth tokens) are scrubbed from anything logged.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import requests
import structlog
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from klag_pipeline.errors import ConfigError
from klag_pipeline.settings.redaction import scrub
from klag_pipeline.settings.schema import OtelSettings

log = structlog.get_logger("klag_pipeline.sinks.otlp")

# Large snapshots are split into several requests: gRPC refuses messages above 4 MiB by default,
# and 5,000 data points with their attributes stay well below that.
MAX_POINTS_PER_REQUEST: Final = 5000

_SDK_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.common._internal",
    "opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder",
)


class _SdkLogCapture(logging.Filter):
    """Diverts the OTLP exporters' log records into a list while the current thread runs one of
    the sink's exports; records logged at any other time pass through untouched."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextlib.contextmanager
    def capturing(self) -> Iterator[list[str]]:
        messages: list[str] = []
        self._local.messages = messages
        try:
            yield messages
        finally:
            self._local.messages = None

    def filter(self, record: logging.LogRecord) -> bool:
        messages: list[str] | None = getattr(self._local, "messages", None)
        if messages is None:
            return True
        messages.append(record.getMessage())
        return False


_CAPTURE: Final = _SdkLogCapture()
_capture_installed = False
_install_lock = threading.Lock()


def _install_capture() -> None:
    global _capture_installed
    with _install_lock:
        if not _capture_installed:
            for name in _SDK_LOGGERS:
                logging.getLogger(name).addFilter(_CAPTURE)
            _capture_installed = True


def display_endpoint(endpoint: str) -> str:
    """The endpoint without user info, for logs."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=host))


def http_metrics_url(endpoint: str) -> str:
    """``endpoint`` for OTLP/HTTP: a bare ``scheme://host:port`` gets the ``/v1/metrics`` path
    (the collector's default route); an endpoint with a path is used exactly as given."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/v1/metrics"))
    return endpoint


@dataclass(frozen=True, slots=True)
class Tls:
    """Certificate material read at start-up, so a missing file fails there and not later."""

    root_certificates: bytes | None
    client_certificate: bytes | None
    client_key: bytes | None


class PinnedVerifySession(requests.Session):
    """requests lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` override ``Session.verify``
    (psf/requests#3829), which would silently replace ``certificate_file`` with the system bundle
    in many container images. Proxy settings from the environment still apply."""

    def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
        merged = super().merge_environment_settings(*args, **kwargs)
        merged["verify"] = self.verify
        return merged


def _read(path: str | None, key: str, problems: list[tuple[str, str]]) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append((f"exporter.otel.{key}", f"cannot read {path}: {exc.strerror or exc}"))
        return None


def plaintext(settings: OtelSettings) -> bool:
    """Whether the connection is unencrypted; :class:`ConfigError` on a contradiction.

    ``insecure`` unset follows the endpoint scheme (``http`` → plaintext). For gRPC an explicit
    ``insecure`` overrides an ``http`` scheme; for OTLP/HTTP the scheme alone decides, so an
    ``insecure`` that contradicts it is an error rather than a silently ignored setting.
    """
    scheme = urlsplit(settings.endpoint).scheme
    if settings.insecure is None:
        return scheme == "http"
    if settings.protocol == "grpc":
        if scheme == "https" and settings.insecure:
            raise ConfigError(
                [("exporter.otel.insecure", "insecure = true contradicts an https:// endpoint")]
            )
        return settings.insecure
    if settings.insecure != (scheme == "http"):
        raise ConfigError(
            [
                (
                    "exporter.otel.insecure",
                    "with protocol http/protobuf the endpoint scheme decides TLS: use http:// "
                    "for plaintext, https:// for TLS",
                )
            ]
        )
    return settings.insecure


def load_tls(settings: OtelSettings) -> Tls:
    problems: list[tuple[str, str]] = []
    tls = Tls(
        root_certificates=_read(settings.certificate_file, "certificate_file", problems),
        client_certificate=_read(
            settings.client_certificate_file, "client_certificate_file", problems
        ),
        client_key=_read(settings.client_key_file, "client_key_file", problems),
    )
    if problems:
        raise ConfigError(problems)
    return tls


def build_exporter(settings: OtelSettings, tls: Tls) -> MetricExporter:
    """A fresh SDK exporter (each MeterProvider generation owns and shuts down its own).

    Every option is passed explicitly, so ``OTEL_EXPORTER_OTLP_*`` variables cannot silently
    change what the settings say.
    """
    if settings.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        insecure = plaintext(settings)
        credentials = (
            None
            if insecure
            else grpc.ssl_channel_credentials(
                root_certificates=tls.root_certificates,
                private_key=tls.client_key,
                certificate_chain=tls.client_certificate,
            )
        )
        # gRPC metadata keys must be lower case.
        headers = tuple((key.lower(), value) for key, value in settings.headers.items())
        return GrpcExporter(
            endpoint=settings.endpoint,
            insecure=insecure,
            credentials=credentials,
            headers=headers,
            timeout=settings.timeout,
            max_export_batch_size=MAX_POINTS_PER_REQUEST,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    plaintext(settings)
    return HttpExporter(
        endpoint=http_metrics_url(settings.endpoint),
        certificate_file=settings.certificate_file,
        client_key_file=settings.client_key_file,
        client_certificate_file=settings.client_certificate_file,
        headers=dict(settings.headers),
        timeout=settings.timeout,
        compression=Compression.NoCompression,
        session=PinnedVerifySession() if settings.certificate_file else None,
        max_export_batch_size=MAX_POINTS_PER_REQUEST,
    )


class ExportHealth:
    """Export outcomes across every provider generation; logs on transition only.

    Called from the SDK's reader thread (and from the thread that flushes at shutdown), hence
    the lock. ``on_error`` is called once per failed export and must be thread-safe.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        protocol: str,
        secrets: Mapping[str, str],
        on_error: Callable[[str], None] | None,
    ) -> None:
        self._endpoint = display_endpoint(endpoint)
        self._protocol = protocol
        self._secrets = tuple(secrets.values())
        self._on_error = on_error
        self._lock = threading.Lock()
        self.failing = False
        self.succeeded = 0
        self.failed = 0
        self._failed_in_a_row = 0

    def record(self, ok: bool, messages: list[str]) -> None:
        with self._lock:
            if ok:
                self.succeeded += 1
                if self.failing:
                    log.info(
                        "otlp_export_recovered",
                        endpoint=self._endpoint,
                        protocol=self._protocol,
                        failed_exports=self._failed_in_a_row,
                    )
                self.failing = False
                self._failed_in_a_row = 0
                return
            self.failed += 1
            self._failed_in_a_row += 1
            error = scrub(describe_failure(messages), self._secrets)
            if not self.failing:
                log.error(
                    "otlp_export_failed",
                    endpoint=self._endpoint,
                    protocol=self._protocol,
                    error=error,
                )
            else:
                log.debug("otlp_export_failed", endpoint=self._endpoint, error=error)
            self.failing = True
        if self._on_error is not None:
            self._on_error("otlp")


def describe_failure(messages: list[str]) -> str:
    """One line from what the SDK logged during a failed export: the first message names the
    cause (refused, TLS, status code); the last says how it ended (retries given up)."""
    if not messages:
        return "export failed"
    first, last = messages[0], messages[-1]
    return first if first == last else f"{first} (then: {last})"


class ObservedExporter(MetricExporter):
    """Delegates to the SDK exporter and reports every export's outcome to :class:`ExportHealth`.

    The reader takes its temporality and aggregation preferences from this wrapper, not from the
    wrapped exporter: the base class default, cumulative for every instrument, is what the
    gauges need and what the rebalance counter must be (a cumulative sum, docs/otlp.md),
    whatever ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` says.
    """

    def __init__(self, inner: MetricExporter, health: ExportHealth) -> None:
        super().__init__()
        _install_capture()
        self._inner = inner
        self._health = health

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        with _CAPTURE.capturing() as messages:
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis)
            # The SDK reports failures as results; anything raised is one more failure to count,
            # never a reason to kill the reader thread.
            except Exception as exc:
                messages.append(f"{type(exc).__name__}: {exc}")
                result = MetricExportResult.FAILURE
        self._health.record(result is MetricExportResult.SUCCESS, messages)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with _CAPTURE.capturing():
            self._inner.shutdown(timeout_millis=timeout_millis)
