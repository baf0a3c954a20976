"""A request-logging proxy in front of every broker of the 3-broker cluster, in a thread of its
own for the whole session: every request the exporter sends, with wall-clock times and the
answer's throttle_time_ms, counted independently of the code under test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from bench.proxy import CountingProxy, RequestHeader, TrafficStats, api_name
from devtools import kafka_local

# api key → (first version whose response body starts with throttle_time_ms, first flexible
# version, whose response header carries a tagged-field count after the correlation id).
_THROTTLE_LAYOUT: dict[int, tuple[int, int]] = {
    1: (1, 12),  # Fetch
    2: (2, 6),  # ListOffsets
    3: (3, 9),  # Metadata
    9: (3, 6),  # OffsetFetch
    10: (1, 3),  # FindCoordinator
    15: (1, 5),  # DescribeGroups
    16: (1, 3),  # ListGroups
    69: (0, 0),  # ConsumerGroupDescribe
}
PEEK_BYTES = 9
"""Correlation id (4), an empty tagged-field count (1), throttle_time_ms (4)."""


def throttle_ms(header: RequestHeader, head: bytes) -> int | None:
    """throttle_time_ms of a response, from its first bytes; None when this API/version has
    none at the start of its body (or the bytes are not there)."""
    layout = _THROTTLE_LAYOUT.get(header.api_key)
    if layout is None or header.api_version < layout[0]:
        return None
    at = 4
    if header.api_version >= layout[1]:
        if len(head) < 5 or head[4] != 0:  # tagged fields in a response header: not expected
            return None
        at = 5
    if len(head) < at + 4:
        return None
    return int.from_bytes(head[at : at + 4], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the exporter sent through a broker's proxy, and its answer."""

    broker: int
    api: str
    version: int
    sent_at: float  # unix seconds when the proxy saw the request
    answered_at: float | None  # None: no answer (yet)
    throttle_ms: int | None


class RequestLog(TrafficStats):
    """TrafficStats that also keeps every exchange with wall-clock times and throttle_time_ms.

    Lives in the proxy thread; :meth:`exchanges` copies under a lock for the test thread."""

    def __init__(self, broker: int) -> None:
        super().__init__()
        self.broker = broker
        self._lock = threading.Lock()
        # (api key, correlation id) → indexes of unanswered requests, oldest first. Correlation
        # ids are per connection; should two connections have the same API and id in flight,
        # their answers may be paired crosswise, which moves no time by much.
        self._open: dict[tuple[int, int], list[int]] = {}
        self._exchanges: list[Exchange] = []

    def request(self, header: RequestHeader, wire_bytes: int) -> None:
        super().request(header, wire_bytes)
        with self._lock:
            self._exchanges.append(
                Exchange(
                    self.broker,
                    api_name(header.api_key),
                    header.api_version,
                    time.time(),
                    None,
                    None,
                )
            )
            key = (header.api_key, header.correlation_id)
            self._open.setdefault(key, []).append(len(self._exchanges) - 1)

    def response(
        self, header: RequestHeader, wire_bytes: int, latency: float, head: bytes = b""
    ) -> None:
        super().response(header, wire_bytes, latency, head)
        with self._lock:
            waiting = self._open.get((header.api_key, header.correlation_id))
            if not waiting:
                return
            index = waiting.pop(0)
            if not waiting:
                del self._open[(header.api_key, header.correlation_id)]
            entry = self._exchanges[index]
            self._exchanges[index] = Exchange(
                entry.broker,
                entry.api,
                entry.version,
                entry.sent_at,
                time.time(),
                throttle_ms(header, head),
            )

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)


class ProxyThread:
    """One request-logging proxy per broker, served by an event loop in a daemon thread so they
    outlive every test's own event loop. Proxies listen before the cluster starts (the brokers
    advertise their ports) and learn their upstream once it has."""

    def __init__(self, brokers: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="multibroker-proxies", daemon=True
        )
        self.logs = [RequestLog(node) for node in range(1, brokers + 1)]
        self._proxies = [
            CountingProxy(("127.0.0.1", 1), stats=log, response_header_bytes=PEEK_BYTES)
            for log in self.logs
        ]
        self.ports: list[int] = []

    def start(self) -> list[int]:
        self._thread.start()
        self.ports = [self._run(proxy.start("127.0.0.1", 0))[1] for proxy in self._proxies]
        return self.ports

    def set_upstreams(self, upstreams: Sequence[tuple[str, int]]) -> None:
        for proxy, upstream in zip(self._proxies, upstreams, strict=True):
            proxy.upstream = upstream

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def exchanges(self) -> list[Exchange]:
        return [e for log in self.logs for e in log.exchanges()]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            for proxy in self._proxies:
                self._run(proxy.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)


@dataclass
class ThreeBrokers:
    """The session's 3-broker cluster and its proxies."""

    cluster: kafka_local.KafkaCluster
    proxies: ProxyThread

    @property
    def bootstrap(self) -> str:
        """Every broker's PLAINTEXT listener, directly (tests' own clients, and an exporter
        whose traffic need not be counted)."""
        return self.cluster.bootstrap

    @property
    def proxied_bootstrap(self) -> str:
        """The proxies: an exporter bootstrapped here talks to every broker through them."""
        return self.proxies.bootstrap


def per_cycle(
    exchanges: Iterable[Exchange], started: float, finished: float
) -> Counter[tuple[str, int]]:
    """(api, broker) → requests sent within [started, finished]."""
    return Counter((e.api, e.broker) for e in exchanges if started <= e.sent_at <= finished)
