"""aiokafka as a transport: bootstrap, connections, and one bounded, observed request at a time.

Everything above this module speaks in node ids, :class:`ApiSpec` versions and klag errors;
aiokafka's exceptions never leave :meth:`Transport.call`.

Over 400 lines on purpose: bootstrap, the per-node capability table, reconnects and the request
path share one state (connections, versions, throttles, requests in flight) that each of them
changes; split apart, each piece would reach into the others' private fields.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import CloseReason, create_conn

from klag_pipeline.errors import (
    KafkaAuthError,
    KafkaConnectionError,
    KafkaError,
    KafkaProtocolError,
    KafkaTimeoutError,
)
from klag_pipeline.kafka.adapter.fetch_sender import MAX_THROTTLE_MS, FetchSender, Throttles
from klag_pipeline.kafka.client_config import (
    client_kwargs,
    isolation_level,
    kerberos_identity,
    sasl_mechanism,
    secret_values,
)
from klag_pipeline.kafka.errors import error_name, outcome, translate
from klag_pipeline.kafka.kerberos import ensure_login
from klag_pipeline.kafka.port import RequestObserver
from klag_pipeline.kafka.protocol import (
    API_VERSIONS,
    METADATA,
    ApiSpec,
    ProtocolDecodeError,
    WireRequest,
    choose_version,
    decode_api_versions,
    decode_metadata,
    encode_api_versions,
    encode_metadata,
)
from klag_pipeline.settings.schema import ClusterSettings, PerformanceSettings

# Bodies larger than this are decoded in a worker thread so one big OffsetFetch / ListOffsets /
# Metadata answer does not stall scrapes served from the same event loop. 64 KiB decodes in
# ~10 ms; several such answers arriving together were decoded back to back on the loop
# (100+ ms event-loop stalls at 2,000 groups, bench/results/large.json).
_THREAD_DECODE_BYTES = 64 * 1024
_API_VERSIONS_VERSION = API_VERSIONS.max_version  # not negotiated: the first request to a node
# aiokafka's own default metadata.max.age.ms: how long it may take aiokafka to notice a broker
# that came back by itself.
_AIOKAFKA_METADATA_MAX_AGE = 300.0
# aiokafka's connection kwargs (create_conn) among the client kwargs.
_CONN_KWARGS = (
    "client_id",
    "request_timeout_ms",
    "ssl_context",
    "security_protocol",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_kerberos_service_name",
    "sasl_kerberos_domain_name",
    "sasl_oauth_token_provider",
)


class Decoded(Protocol):
    """What the transport needs from every decoded response."""

    @property
    def throttle_ms(self) -> int: ...

    @property
    def error_code(self) -> int: ...


R = TypeVar("R", bound=Decoded)
T = TypeVar("T")


class Transport:
    """One cluster's connections, capability table and per-node throttle state."""

    def __init__(
        self,
        cluster: ClusterSettings,
        performance: PerformanceSettings,
        observer: RequestObserver | None,
        client_factory: Callable[..., Any] = AIOKafkaClient,
    ) -> None:
        """``client_factory`` builds the aiokafka client (tests pass a fake transport)."""
        props = cluster.consumer_properties
        kwargs, self.warnings = client_kwargs(props)
        kwargs.setdefault("request_timeout_ms", max(1, int(performance.kafka_timeout * 1000)))
        self._kwargs = kwargs
        self._cluster = cluster
        self.performance = performance
        self._observer = observer
        self.isolation_level = isolation_level(props)
        self._mechanism = sasl_mechanism(props)
        self._kerberos = kerberos_identity(props)
        protocol = str(kwargs.get("security_protocol", "PLAINTEXT"))
        # How this cluster authenticates, for bootstrap failure messages (SPEC §9).
        self._security = f"security.protocol {protocol}" + (
            f", SASL mechanism {self._mechanism}" if self._mechanism else ""
        )
        self._secrets = secret_values(props)
        self._client_factory = client_factory
        self._client: Any = None
        self._versions: dict[int, Mapping[int, tuple[int, int]]] = {}
        self._throttles = Throttles()
        # What is awaited right now, for the one-shot commands' progress and timeout messages
        # ("no answer from broker B"): bootstrap, or requests in flight per node.
        self._bootstrapping = False
        self._in_flight: Counter[int] = Counter()
        self._seen_nodes: set[int] = set()
        self._missing_since: float | None = None
        max_age_ms = kwargs.get("metadata_max_age_ms")
        self._aiokafka_max_age = (
            int(max_age_ms) / 1000 if max_age_ms is not None else _AIOKAFKA_METADATA_MAX_AGE
        )

    # ---------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        """Bootstrap and learn every broker's API versions.

        Raises KafkaAuthError / KafkaConnectionError naming the broker(s) when nothing works.
        """
        await self.close()
        if self._kerberos is not None:
            try:
                await ensure_login(self._kerberos)
            except KafkaError as exc:
                raise KafkaAuthError(
                    f"cluster {self._cluster.name}: {exc}", mechanism=self._mechanism
                ) from exc
        client = self._client_factory(
            bootstrap_servers=list(self._cluster.bootstrap_servers), **self._kwargs
        )
        hosts = max(1, len(self._cluster.bootstrap_servers))
        self._bootstrapping = True
        try:
            async with asyncio.timeout(self.performance.kafka_timeout * hosts):
                await client.bootstrap()
        except asyncio.CancelledError:
            await client.close()
            raise
        except Exception as exc:  # aiokafka hides the cause; diagnose below
            await client.close()
            raise await self._diagnose(exc) from exc
        finally:
            self._bootstrapping = False
        self._client = client
        nodes = self.nodes()
        results = await asyncio.gather(
            *(self.versions(node) for node in nodes), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if nodes and len(errors) == len(nodes):
            await self.close()
            first = errors[0]
            raise first if isinstance(first, KafkaError) else KafkaProtocolError(str(first))

    async def _diagnose(self, exc: BaseException) -> KafkaError:
        """Why bootstrap failed: aiokafka logs the per-host cause and raises a generic error."""
        assert self._cluster.bootstrap_servers
        conn_kwargs = {k: v for k, v in self._kwargs.items() if k in _CONN_KWARGS}

        async def probe(server: str) -> KafkaError | None:
            host, _, port = server.rpartition(":")
            host = host.strip("[]") or server
            try:
                async with asyncio.timeout(self.performance.kafka_timeout):
                    conn = await create_conn(host, int(port or 9092), **conn_kwargs)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # every cause becomes a klag error
                return translate(
                    err,
                    broker=server,
                    what="connect",
                    mechanism=self._mechanism,
                    secrets=self._secrets,
                )
            conn.close()
            return None

        found = await asyncio.gather(*(probe(s) for s in self._cluster.bootstrap_servers))
        errors = [e for e in found if e is not None]
        servers = ", ".join(self._cluster.bootstrap_servers)
        for err in errors:
            if isinstance(err, KafkaAuthError):
                return KafkaAuthError(
                    f"cluster {self._cluster.name} ({self._security}): {err}",
                    broker=err.broker or servers,
                    mechanism=self._mechanism,
                )
        reasons = "; ".join(str(e) for e in errors) or str(exc) or type(exc).__name__
        return KafkaConnectionError(
            f"cluster {self._cluster.name} ({self._security}): cannot bootstrap from "
            f"{servers}: {reasons}",
            broker=servers,
        )

    async def close(self) -> None:
        """Discard the aiokafka client. Never raises: the client is being thrown away."""
        client, self._client = self._client, None
        self._versions.clear()
        self._throttles.clear()
        self._seen_nodes.clear()
        self._missing_since = None
        if client is not None:
            try:
                await client.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                # AIOKafkaClient.close() re-raises whatever killed its metadata task (e.g. the
                # AssertionError of a malformed ApiVersions answer). That failure was already
                # reported: _require_client raised KafkaConnectionError for it, which is why we
                # are reconnecting or stopping now.
                pass

    # ---------------------------------------------------------------- cluster view

    def _require_client(self) -> Any:
        if self._client is None:
            raise KafkaConnectionError(f"cluster {self._cluster.name}: not connected")
        died = _metadata_task_failure(self._client)
        if died is not None:
            # aiokafka's background metadata refresh ended on an exception it does not catch
            # (it only expects its own errors): the client would never learn of broker or
            # leader changes again. Fail like a lost connection, so the next cycle reconnects.
            raise KafkaConnectionError(
                f"cluster {self._cluster.name}: the Kafka client's metadata refresh stopped "
                f"({died}); reconnecting"
            )
        return self._client

    def fetch_sender(self, observer: RequestObserver | None = None) -> FetchSender:
        """The connected client's ``send`` for the timestamp sampler, behind this transport's
        throttle table (see :class:`FetchSender`)."""
        return FetchSender(self._require_client(), self._drop_connection, self._throttles, observer)

    @property
    def client(self) -> Any:
        """The connected aiokafka client (for the Fetch sampler, which speaks aiokafka's
        FetchRequest directly)."""
        return self._require_client()

    def nodes(self) -> list[int]:
        """Node ids of every broker aiokafka knows (its metadata, refreshed in the background)."""
        client = self._require_client()
        return sorted(int(b.nodeId) for b in client.cluster.brokers())

    def broker_address(self, node: int) -> tuple[str, int] | None:
        meta = self._require_client().cluster.broker_metadata(node)
        return None if meta is None else (str(meta.host), int(meta.port))

    def waiting_on(self) -> tuple[str, ...]:
        """The brokers an answer is awaited from right now: the bootstrap servers while
        bootstrapping, else ``host:port`` (``node N`` if unknown) of nodes with requests in
        flight. The timestamp sampler's Fetches go through aiokafka directly and are not seen."""
        if self._bootstrapping:
            return self._cluster.bootstrap_servers
        waiting = []
        for node in sorted(n for n, count in self._in_flight.items() if count > 0):
            address = self.broker_address(node) if self._client is not None else None
            waiting.append(f"{address[0]}:{address[1]}" if address else f"node {node}")
        return tuple(waiting)

    def request_metadata_refresh(self) -> None:
        """Ask aiokafka to refresh its broker list (a node we need is unknown or moved)."""
        if self._client is not None:
            self._client.force_metadata_update()

    async def sync_brokers(self) -> None:
        """Make aiokafka learn a broker that came back, before it is needed.

        aiokafka drops a broker from its list when a connection fails, and lists it again only
        at its next full metadata refresh (``metadata.max.age.ms``, 5 min by default). Until
        then a restarted broker gets no ListGroups, so groups whose coordinator moves onto it
        vanish without any error. While a broker seen since connect is missing, this asks one
        broker for the broker list (a Metadata request for no topics, once per call) and makes
        aiokafka refresh as soon as the missing broker is back. In steady state it sends nothing.
        """
        client = self._require_client()
        known = {int(b.nodeId) for b in client.cluster.brokers()}
        self._seen_nodes |= known
        if not self._seen_nodes - known:
            self._missing_since = None
            return
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        elif now - self._missing_since > self._aiokafka_max_age:
            # aiokafka's own refresh has run since: the broker is gone for good.
            self._seen_nodes = known
            self._missing_since = None
            return
        for node in sorted(known):
            try:
                version = await self.choose(node, METADATA)
                if version is None:
                    return
                response = await self.call(
                    node,
                    METADATA,
                    version,
                    encode_metadata(version, []),
                    partial(decode_metadata, version),
                )
            except KafkaError:
                continue
            if {b.node_id for b in response.brokers} - known:
                try:
                    async with asyncio.timeout(self.performance.kafka_timeout):
                        await client.force_metadata_update()
                except TimeoutError:
                    return
            return

    async def versions(self, node: int) -> Mapping[int, tuple[int, int]]:
        """The node's supported API versions (ApiVersions once per node and connection)."""
        known = self._versions.get(node)
        if known is not None:
            return known
        response = await self.call(
            node,
            API_VERSIONS,
            _API_VERSIONS_VERSION,
            encode_api_versions(_API_VERSIONS_VERSION),
            lambda raw: decode_api_versions(_API_VERSIONS_VERSION, raw),
        )
        if not response.versions:
            raise KafkaProtocolError(
                f"ApiVersions (broker {node}): {error_name(response.error_code)}",
                broker=str(node),
            )
        self._versions[node] = response.versions
        return response.versions

    async def choose(self, node: int, spec: ApiSpec) -> int | None:
        return choose_version(spec, await self.versions(node))

    async def require(
        self, node: int, spec: ApiSpec, unsupported: Callable[[], Exception] | None = None
    ) -> int:
        """The version of ``spec`` to use with ``node``, or raise ``unsupported()`` (by default
        a ``KafkaProtocolError`` "broker N does not support <API>") when they share none."""
        version = await self.choose(node, spec)
        if version is None:
            if unsupported is not None:
                raise unsupported()
            raise KafkaProtocolError(f"broker {node} does not support {spec.name}")
        return version

    # ---------------------------------------------------------------- requests

    async def call(
        self,
        node: int,
        spec: ApiSpec,
        version: int,
        body: bytes,
        decode: Callable[[bytes], R],
        *,
        seconds: float | None = None,
    ) -> R:
        """Send one request to ``node`` and decode its answer within ``seconds``.

        ``seconds`` defaults to ``kafka_timeout``. Raises only klag ``KafkaError``s. Honours
        the node's throttle ("not before") time and
        reports the request to the observer.
        """
        broker = str(node)
        started = time.monotonic()
        self._in_flight[node] += 1
        try:
            async with asyncio.timeout(seconds or self.performance.kafka_timeout):
                await self.wait_throttle(node)
                raw: Any = await self._require_client().send(node, WireRequest(spec, version, body))
                if not isinstance(raw, bytes):
                    raise ProtocolDecodeError(f"unexpected response object {type(raw).__name__}")
                if len(raw) > _THREAD_DECODE_BYTES:
                    result = await asyncio.to_thread(decode, raw)
                else:
                    result = decode(raw)
                if not 0 <= result.throttle_ms <= MAX_THROTTLE_MS:
                    raise ProtocolDecodeError(f"implausible throttle_time_ms {result.throttle_ms}")
        except asyncio.CancelledError:
            # Abandoned by a caller's deadline (the cycle's poll_interval is often shorter
            # than kafka_timeout): the answer may never come, and later requests would queue
            # behind it on this connection for good. Same remedy as our own timeout.
            self._drop_connection(node)
            raise
        except Exception as exc:  # one request's failure, whatever raised it
            err = translate(
                exc,
                broker=broker,
                what=f"{spec.name} v{version}",
                mechanism=self._mechanism,
                secrets=self._secrets,
            )
            if isinstance(err, KafkaConnectionError):
                # The broker may come back upgraded (or be another broker with this id).
                self._versions.pop(node, None)
            elif isinstance(err, KafkaTimeoutError):
                self._drop_connection(node)
            self._observe(spec.name, broker, outcome(err), started)
            raise err from exc
        finally:
            self._in_flight[node] -= 1
        if result.throttle_ms > 0:
            self.note_throttle(node, result.throttle_ms)
            if self._observer is not None:
                self._observer.on_throttle(spec.name, broker, result.throttle_ms)
        code = result.error_code
        self._observe(spec.name, broker, "ok" if code == 0 else error_name(code), started)
        return result

    async def wait_throttle(self, node: int) -> None:
        """Sleep until ``node``'s last throttle_time_ms has passed (see :class:`Throttles`)."""
        await self._throttles.wait_throttle(node)

    def note_throttle(self, node: int, throttle_ms: int) -> None:
        """A response from ``node`` asked for a pause: no request goes there before it ends."""
        self._throttles.note_throttle(node, throttle_ms)

    def _drop_connection(self, node: int) -> None:
        """Close ``node``'s connection after one of our deadlines expired.

        Kafka answers a connection's requests in order, so later requests would queue behind
        an answer that may never come; aiokafka only closes on its own timeout, not on ours.
        There is no public API for this: reach into the client's connection table.
        """
        conns = getattr(self._client, "_conns", None)
        if not isinstance(conns, dict):
            return
        for key, conn in list(conns.items()):
            if isinstance(key, tuple) and key and key[0] == node:
                conn.close(reason=CloseReason.CONNECTION_TIMEOUT)

    def _observe(self, api: str, broker: str, result: str, started: float) -> None:
        if self._observer is not None:
            self._observer.on_request(api, broker, result, time.monotonic() - started)


def _metadata_task_failure(client: Any) -> str | None:
    """Why aiokafka's metadata task ended, or None while it runs. There is no public API for
    this; a client without the attribute (a test fake) counts as running."""
    task = getattr(client, "_sync_task", None)
    if not isinstance(task, asyncio.Task) or not task.done() or task.cancelled():
        return None
    exc = task.exception()
    return "it ended" if exc is None else f"{type(exc).__name__}: {exc}"


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]
