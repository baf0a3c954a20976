"""Real OTLP metric receivers: a gRPC ``MetricsService`` server and an OTLP/HTTP endpoint.

Both listen on 127.0.0.1 (a free port on first start, the same port on every restart), decode
each ``ExportMetricsServiceRequest`` with the collector's own protobuf definitions, record it,
and let a test wait, with a deadline, for a request that satisfies a predicate. They run on the
test's event loop; the SDK exports from its own thread, so the loop is free to answer.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
    MetricsServiceServicer,
    add_MetricsServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from devtools.kafka_local import TlsFiles


@dataclass(frozen=True)
class Received:
    """One export request as it arrived: the decoded body and the transport's headers/metadata."""

    request: ExportMetricsServiceRequest
    headers: Mapping[str, str]
    arrived_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Point:
    """One gauge or sum data point, flattened: metric name, attributes, value, resource
    attributes; ``kind`` is ``gauge``, or ``cumulative sum`` for a monotonic sum with
    cumulative temporality (any other sum fails in :func:`points`)."""

    name: str
    attributes: Mapping[str, Any]
    value: int | float
    resource: Mapping[str, Any]
    description: str = ""
    kind: str = "gauge"

    def key(self) -> tuple[str, frozenset[tuple[str, Any]]]:
        return self.name, frozenset(self.attributes.items())


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


def points(request: ExportMetricsServiceRequest) -> list[Point]:
    """Every gauge and cumulative monotonic sum point of ``request``; a metric of another type
    (a histogram, a delta or non-monotonic sum) fails the test."""
    out: list[Point] = []
    for resource_metrics in request.resource_metrics:
        resource = {a.key: _any_value(a.value) for a in resource_metrics.resource.attributes}
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                assert kind in ("gauge", "sum"), f"{metric.name} is a {kind}"
                if kind == "sum":
                    cumulative = metric.sum.aggregation_temporality == (
                        AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
                    )
                    assert metric.sum.is_monotonic, metric.name
                    assert cumulative, metric.name
                data = metric.gauge if kind == "gauge" else metric.sum
                for dp in data.data_points:
                    value: int | float = (
                        dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    )
                    out.append(
                        Point(
                            name=metric.name,
                            attributes={a.key: _any_value(a.value) for a in dp.attributes},
                            value=value,
                            resource=resource,
                            description=metric.description,
                            kind="gauge" if kind == "gauge" else "cumulative sum",
                        )
                    )
    return out


def metric_names(request: ExportMetricsServiceRequest) -> set[str]:
    return {p.name for p in points(request)}


def series(request: ExportMetricsServiceRequest) -> dict[tuple[str, frozenset[Any]], int | float]:
    """``{(name, attributes): value}`` of every point of ``request``."""
    out: dict[tuple[str, frozenset[Any]], int | float] = {}
    for point in points(request):
        key = point.key()
        assert key not in out, f"duplicate series {key}"
        out[key] = point.value
    return out


def _split_keystore(tls: TlsFiles) -> tuple[bytes, bytes]:
    """(private key, certificate chain) of the server keystore PEM (key first, then chain)."""
    pem = tls.server_keystore.read_bytes()
    end = b"-----END PRIVATE KEY-----\n"
    cut = pem.index(end) + len(end)
    return pem[:cut], pem[cut:]


class _Recorder:
    """The received requests and the waiting on them, shared by both receivers."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._arrived = asyncio.Event()

    def _record(self, request: ExportMetricsServiceRequest, headers: Mapping[str, str]) -> None:
        self.received.append(Received(request, dict(headers)))
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    @property
    def count(self) -> int:
        return len(self.received)

    def requests(self, after: int = 0) -> Iterator[ExportMetricsServiceRequest]:
        return (r.request for r in self.received[after:])

    async def wait_for(
        self,
        predicate: Callable[[ExportMetricsServiceRequest], bool],
        *,
        within: float = 15.0,
        after: int = 0,
    ) -> Received:
        """The first request received at index ``after`` or later that satisfies ``predicate``;
        AssertionError when none has arrived within ``within`` seconds."""
        deadline = time.monotonic() + within
        checked = after
        while True:
            while checked < len(self.received):
                received = self.received[checked]
                checked += 1
                if predicate(received.request):
                    return received
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no matching OTLP request within {within:g}s "
                    f"({len(self.received) - after} received after #{after})"
                )
            arrived = self._arrived
            try:
                await asyncio.wait_for(arrived.wait(), timeout=remaining)
            except TimeoutError:
                continue


class _Servicer(MetricsServiceServicer):
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder

    async def Export(
        self, request: ExportMetricsServiceRequest, context: grpc.aio.ServicerContext
    ) -> ExportMetricsServiceResponse:
        headers = {key: value for key, value in (context.invocation_metadata() or ())}
        self._recorder._record(request, headers)
        return ExportMetricsServiceResponse()


class GrpcReceiver(_Recorder):
    """OTLP/gRPC on 127.0.0.1: ``await start()``, ``await stop()``, ``await start()`` again.

    With ``tls`` it serves TLS with the generated server certificate (endpoint ``https://``);
    ``client_auth`` then also requires a client certificate signed by the test CA.
    """

    def __init__(self, *, tls: TlsFiles | None = None, client_auth: bool = False) -> None:
        super().__init__()
        self.port = 0
        self._tls = tls
        self._client_auth = client_auth
        self._server: grpc.aio.Server | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        assert self._server is None, "already running"
        # No SO_REUSEPORT: a restart must get this exact port or fail, never share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_MetricsServiceServicer_to_server(_Servicer(self), server)
        address = f"127.0.0.1:{self.port}"
        if self._tls is None:
            port = server.add_insecure_port(address)
        else:
            key, chain = _split_keystore(self._tls)
            credentials = grpc.ssl_server_credentials(
                [(key, chain)],
                root_certificates=self._tls.ca_cert.read_bytes() if self._client_auth else None,
                require_client_auth=self._client_auth,
            )
            port = server.add_secure_port(address, credentials)
        assert port, f"could not bind 127.0.0.1:{self.port}"
        assert self.port in (0, port), f"asked for port {self.port}, got {port}"
        self.port = port
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> GrpcReceiver:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()


class HttpReceiver(_Recorder):
    """OTLP/HTTP (``POST /v1/metrics``, ``application/x-protobuf``) on 127.0.0.1.

    ``reject_with`` = an HTTP status answers every request with that status (nothing recorded)
    and a body that echoes the request's ``Authorization`` header, like some proxies do: the
    sink must not log it. ``tls`` serves HTTPS with the generated server certificate.
    """

    def __init__(self, *, tls: TlsFiles | None = None) -> None:
        super().__init__()
        self.port = 0
        self.reject_with: int | None = None
        self.rejected = 0
        self._tls = tls
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _export(self, request: web.Request) -> web.Response:
        if self.reject_with is not None:
            self.rejected += 1
            echoed = request.headers.get("Authorization", "")
            return web.Response(status=self.reject_with, text=f"rejected credentials {echoed}")
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text=f"unsupported {request.content_type}")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        message = ExportMetricsServiceRequest()
        message.ParseFromString(body)
        self._record(message, {k.lower(): v for k, v in request.headers.items()})
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def start(self) -> None:
        assert self._runner is None, "already running"
        app = web.Application()
        app.router.add_post("/v1/metrics", self._export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls.server_keystore)
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
